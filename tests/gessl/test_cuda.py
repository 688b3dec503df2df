"""The CUDA path, on a GPU when one is visible; skipped elsewhere (CI has none).

- Training steps between two log steps queue their GPU work without waiting for it: under
  ``torch.cuda.set_sync_debug_mode("error")`` any operation that synchronises the host with the GPU
  (``.item()``, a copy to the host, a boolean mask, a host tensor copied from pageable memory)
  raises. Checked for the plain step and for the demo's SimCLR + DSA inside GeSSL, with the GPU
  defaults (bf16 autocast where supported, channels-last, pinned copies, augmentation on the GPU).
- With ``--amp off`` a step computes on the GPU what it computes on the CPU: the same loss and
  gradients for the same weights and batch, to float rounding (TF32 off).

Written without a GPU to run it (none was lent to this project yet): the first session that has one
runs ``python -m pytest tests/gessl/test_cuda.py``.
"""
import pytest
import torch

from gessl import train
from gessl.bilevel import META_OPTIMISERS
from gessl.config import resolve_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")


@pytest.mark.parametrize("flags", [{"meta": "none"}, {"meta": "none", "reg": "dsa"}, {"meta": "gessl", "reg": "dsa"},
                                   {"meta": "gessl", "inner_params": "head"}],
                         ids=["plain", "dsa", "gessl-dsa", "gessl-head"])
def test_training_steps_between_logs_never_wait_for_the_gpu(glyph_root, tmp_path, flags):
    cfg = resolve_config({"device": "cuda", "batch_size": 64, "log_every": 1000, "eval_episodes": 0, **flags})
    trainer = train.Trainer(cfg, tmp_path)
    trainer.train_step()  # the first step's one-time set-up (cuDNN, Adam's state) may wait
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("flags", [{"meta": "none"}, {"meta": "gessl"}, {"meta": "gessl", "inner_params": "head"}],
                         ids=["plain", "gessl", "gessl-head"])
def test_a_step_on_the_gpu_computes_what_it_computes_on_the_cpu(flags, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cfg = resolve_config({**flags, "reg": "dsa", "amp": "off", "channels_last": "off"})
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(32, 1, 28, 28, generator=gen) for _ in range(3)]
    results = []
    for device in ("cpu", "cuda"):
        model = train.build_model(cfg, in_channels=1, num_classes=10).to(device).train()
        batch = {"images": images[0].to(device), "views": [v.to(device) for v in images[1:]],
                 "labels": torch.arange(32).remainder(10).to(device)}
        logs = META_OPTIMISERS[cfg.meta].from_config(cfg).compute_gradients(model, model.prepare_batch(batch))
        results.append((float(logs["loss"]), [p.grad.cpu() for p in model.parameters() if p.grad is not None]))
    (cpu_loss, cpu_grads), (gpu_loss, gpu_grads) = results
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-4)
    assert len(gpu_grads) == len(cpu_grads)
    for g, c in zip(gpu_grads, cpu_grads):
        torch.testing.assert_close(g, c, rtol=1e-3, atol=1e-5)
