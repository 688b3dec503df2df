"""gessl as a library: GeSSL around a user's own model in the user's own loop, the same gradients as
``gessl.train --meta gessl``, and one-sentence errors for bad input."""
import copy
import dataclasses
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gessl
from gessl import GeSSL, SSLOutput
from gessl.config import read_run_config
from tasks.common.errors import UserError
from tasks.data.registry import load_split
from tests.helpers import REPO, train_cli


class Pairs(nn.Module):
    """A model of the user's own: a linear encoder with a dropout, BatchNorm and an InfoNCE loss."""

    def __init__(self, projections=True, scale=1.0):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Tanh())
        self.projections, self.scale = projections, scale

    def forward(self, batch):
        z1, z2 = (self.encoder(v) for v in batch["views"])
        logits = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T / 0.5
        loss = self.scale * F.cross_entropy(logits, torch.arange(len(z1)))
        return SSLOutput(loss, projections=(z1, z2) if self.projections else ())


def pair_batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g)
    return {"views": [x + 0.1 * torch.randn(x.shape, generator=g), x + 0.1 * torch.randn(x.shape, generator=g)]}


def test_the_public_names():
    assert set(gessl.__all__) <= set(dir(gessl))
    assert gessl.evaluate_backbone.__module__ == "gessl.backbone_eval"
    assert "simclr" in gessl.BASE_METHODS and gessl.SSLOutput is SSLOutput
    assert gessl.build_model.__module__ == "gessl.train" and gessl.training_batches.__module__ == "gessl.bn_stats"
    assert gessl.paired_differences.__module__ == "gessl.evaluate" and "ways" in gessl.EPISODE_FIELDS


def test_a_script_outside_the_project_trains_its_own_model_with_gessl(tmp_path):
    """examples/gessl_loop.py, copied into an empty folder: nothing of the project's but ``import gessl``."""
    shutil.copy(REPO / "examples" / "gessl_loop.py", tmp_path)
    done = subprocess.run([sys.executable, "gessl_loop.py", "--steps", "5", "--batch-size", "16"], cwd=tmp_path,
                          capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    losses = [float(x) for x in re.findall(r"^step \d+: loss (\S+)", done.stdout, re.M)]
    moved = float(re.search(r"parameters moved by (\S+)", done.stdout).group(1))
    assert len(losses) == 5 and all(torch.isfinite(torch.tensor(losses)))
    assert moved > 1e-3


def test_the_command_line_step_has_the_gradients_of_the_python_call(data_root, tmp_path):
    """One SGD step of lr 1 without momentum's history or decay moves θ by −∇: ``gessl.train --meta gessl``'s
    first step gives the gradient the Python call computes on the model and batch that the public
    ``resolve_config``, ``build_model`` and ``training_batches`` give for the same options."""
    run = tmp_path / "run"
    done = train_cli("--out", str(run), "--meta", "gessl", "--max-steps", "1", "--batch-size", "16",
                     "--optimizer", "sgd", "--lr", "1", "--warmup-steps", "0", "--weight-decay", "0",
                     "--eval-episodes", "0", "--data-root", str(data_root))
    assert done.returncode == 0, done.stderr
    cfg = gessl.resolve_config({"meta": "gessl", "max_steps": 1, "batch_size": 16, "optimizer": "sgd", "lr": 1,
                                "warmup_steps": 0, "weight_decay": 0, "eval_episodes": 0,
                                "data_root": str(data_root), "out": str(run)})
    assert cfg == read_run_config(run)
    split = load_split(cfg.dataset, "background", cfg.data_root, cfg.image_size)
    model = gessl.build_model(cfg, 1, int(split[1].max()) + 1)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = next(gessl.training_batches(cfg, 1, split))
    step = GeSSL()  # the documented defaults are the command line's, "auto" chosen for this model as the config does
    assert dataclasses.replace(GeSSL.from_config(cfg), inner_params="auto") == step and cfg.inner_params == "head"
    step(model, batch)
    after = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    assert all(p.grad.abs().max() > 1e-6 for name, p in model.backbone.named_parameters() if name.endswith("weight"))
    # atol 1e-4: a convolution's bias before BatchNorm has a gradient of 0 up to rounding (about 1e-5 here,
    # which the CLI's thread count changes); the weights' gradients are three orders larger
    for name, p in model.named_parameters():
        torch.testing.assert_close(start[name] - after[name], p.grad, rtol=1e-3, atol=1e-4, msg=lambda m: name + m)


def test_the_check_of_the_first_call_leaves_the_step_as_if_it_had_not_run():
    """The first call runs the model once to check its output; dropout's random state and BatchNorm's
    statistics go on as if it had not: the checked call equals an unchecked one from the same state."""
    model, batch, step = Pairs(), pair_batch(), GeSSL(inner_lr=0.1)
    initial = copy.deepcopy(model.state_dict())
    results = []
    for _ in range(2):  # the second call with the same model is not checked again
        model.load_state_dict(initial)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        logs = step(model, batch)
        results.append(([p.grad.clone() for p in model.parameters()], copy.deepcopy(model.state_dict()),
                        logs["loss"], torch.rand(1)))
    (grads_a, state_a, loss_a, draw_a), (grads_b, state_b, loss_b, draw_b) = results
    assert step._checked_model() is model
    assert loss_a == loss_b and draw_a == draw_b
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.mark.parametrize("make, batch, message", [
    (Pairs, [1, 2], "batch dict whose 'views' is a list of two tensors"),
    (Pairs, {"images": torch.zeros(8, 1, 4, 4)}, "batch dict whose 'views' is a list of two tensors"),
    (Pairs, {"views": [torch.zeros(8, 1, 4, 4), torch.zeros(7, 1, 4, 4)]}, r"batch\['views'\]\[1\] is a tensor"),
    (Pairs, {**pair_batch(), "labels": torch.zeros(5)}, r"batch\['labels'\] is a tensor of shape \[5\]"),
    (Pairs, pair_batch(n=3), "a batch of 3 images cut into 1 tasks .* fewer than 2 images"),
    (lambda: Pairs(projections=False), pair_batch(), "projections are the two views' projector outputs"),
    (lambda: Pairs(scale=float("nan")), pair_batch(), "finite scalar loss, got a tensor of shape \\[\\] \\(nan\\)"),
])
def test_bad_input_is_one_sentence_before_any_gradient(make, batch, message):
    model = make()
    with pytest.raises(ValueError, match=message) as error:
        GeSSL()(model, batch)
    assert "\n" not in str(error.value)
    assert all(p.grad is None for p in model.parameters())


def test_tasks_per_step_counts_in_the_size_check():
    with pytest.raises(ValueError, match="a batch of 8 images cut into 4 tasks"):
        GeSSL(tasks_per_step=4)(Pairs(), pair_batch(n=8))
    logs = GeSSL(tasks_per_step=2)(Pairs(), pair_batch(n=8))  # 2 tasks of 4: 2 support, 2 query images each
    assert torch.isfinite(logs["loss"]) and logs["sigma_kl"] >= 0


@pytest.mark.parametrize("outer_set, outer", [
    ("task", [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]),   # the outer loss on the whole task
    ("query", [[2, 3], [6], [9]]),                    # on the images after the support set
])
def test_task_sets_are_contiguous_tasks_cut_into_support_and_outer_images(outer_set, outer):
    batch = {**pair_batch(n=10), "index": torch.arange(10)}
    # 10 images in 3 tasks of 4, 3 and 3; round(t · 0.5) support images: 2, round(1.5) = 2, 2
    sets = GeSSL(tasks_per_step=3, support_ratio=0.5, outer_set=outer_set).task_sets(batch)
    assert [s["index"].tolist() for s, _ in sets] == [[0, 1], [4, 5], [7, 8]]
    assert [o["index"].tolist() for _, o in sets] == outer
    assert all(torch.equal(s["views"][1], batch["views"][1][s["index"]]) for s, _ in sets)


def test_config_from_flags_is_the_config_the_command_line_trains(tmp_path):
    (tmp_path / "options.yaml").write_text("lr: 0.02\nseed: 5\n")
    flags = ["--config", str(tmp_path / "options.yaml"), "--base", "barlow", "--inner-params", "head", "--seed", "3"]
    assert gessl.config_from_flags(flags) == gessl.resolve_config(
        {"lr": 0.02, "seed": 3, "base": "barlow", "inner_params": "head"})
    with pytest.raises(SystemExit):
        gessl.config_from_flags(["--no-such-flag", "1"])
    with pytest.raises(UserError, match="inner.params"):
        gessl.config_from_flags(["--inner-params", "backbone"])


def test_options_are_the_dataclass_fields():
    assert dataclasses.replace(GeSSL(), inner_lr=0.5).inner_lr == 0.5
    with pytest.raises(TypeError):
        GeSSL(no_such_option=1)
