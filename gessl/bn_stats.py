"""BatchNorm running statistics re-estimated for the parameters a backbone has now.

In training, BatchNorm normalises with the batch's own statistics; in eval mode it uses its running
averages μ, σ² (``tasks.evaluation.frozen`` folds them into the convolutions, so every evaluation depends on
them). Training keeps them as μ ← (1 − m) μ + m μ_B (m = 0.1) over the batches the model saw, of
the activations of whichever parameters ran those forward passes: under GeSSL the outer forward
pass runs the adapted θ_K, while the saved parameters are θ.

``reestimate`` resets them and sets them for the present parameters: over n forward passes in
train mode without gradients, PyTorch's cumulative average (``momentum=None``), μ = (1/n) Σ_b μ_b
and σ² = (1/n) Σ_b s²_b (s²_b the unbiased variance of batch b). The batches are those of the
run's own training steps 0..n−1 (``gessl.train.step_batch``: the same images, augmented views,
both views in one pass as the base methods run them).

``python -m gessl.bn_stats RUN_DIR --out NEW_RUN [--batches 20]`` writes a run folder (the config
and the backbone with re-estimated statistics) that ``python -m gessl.evaluate`` scores.
"""
import argparse
import shutil
from pathlib import Path

import torch
from torch import nn

from gessl.backbones import load_backbone, save_backbone
from gessl.config import read_run_config
from gessl.device import Placement
from gessl.evaluate import check_run_dir
from gessl.train import step_batch
from tasks.common.errors import UserError, run_cli
from tasks.data.registry import load_split
from tasks.training.augment import GlyphAugment


def reestimate(net, batches):
    """Reset the running statistics of every BatchNorm in ``net`` and set them to the cumulative
    average over ``batches`` (image tensors), with ``net``'s present parameters; ``net`` is left
    in eval mode, its parameters unchanged."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        for x in batches:
            net(x)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return net.eval()


def training_batches(cfg, steps, split=None):
    """The batches of the run's training steps 0..``steps``−1 (``gessl.train.step_batch``), from
    ``split`` (images, labels) when given, else from the run's training split."""
    images, labels = split if split is not None else load_split(cfg.dataset, "background", cfg.data_root,
                                                                 cfg.image_size)
    images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    per_epoch = len(images) // cfg.batch_size
    placement, augment = Placement.from_config(cfg, torch.device("cpu")), GlyphAugment.from_config(cfg)
    for step in range(steps):
        yield step_batch(images, labels, cfg, step, per_epoch, augment, placement)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gessl.bn_stats", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `python -m gessl.train`")
    parser.add_argument("--out", required=True, help="the new run folder (config and backbone)")
    parser.add_argument("--batches", type=int, default=20, help="training batches the statistics average")
    args = parser.parse_args(argv)
    if args.batches < 1:
        raise UserError(f"--batches must be at least 1, got {args.batches}")
    run_dir, out = check_run_dir(args.run_dir), Path(args.out)
    if out.exists():
        raise UserError(f"{out} already exists; choose another --out")
    cfg = read_run_config(run_dir)
    net, meta = load_backbone(run_dir / "backbone.pt")
    reestimate(net, (torch.cat(b["views"]) for b in training_batches(cfg, args.batches)))
    out.mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", out / "config.yaml")
    save_backbone(net, meta["name"], meta["in_channels"], meta["image_size"], out / "backbone.pt", step=meta["step"])
    print(f"BatchNorm statistics of {run_dir}'s parameters over {args.batches} training batches: {out}")


if __name__ == "__main__":
    run_cli(main)
