"""How far one of GeSSL's inner steps moves the model, per base method.

GeSSL's inner loop (``gessl.bilevel``, step 2) takes plain SGD steps θ ← θ − α ∇L(θ; S) on the base
method's loss over a task's support set S. The move ‖α ∇L‖ is set by α *and by the scale of the
loss*, which differs by orders of magnitude between base methods (SimCLR's InfoNCE is about log of
the batch size; Barlow Twins' sum over a D×D correlation matrix is about D at initialisation).
This script measures, for each base method at its default options, on the support set of the first
task of training step 0 (the real batch, views, task cut and support share of ``--meta gessl``)::

    relative move = ‖α ∇_θ L(θ; S)‖ / ‖θ‖       (θ: every parameter that requires a gradient)

at initialisation (seed ``--seed``), and the α that would move it as far as the reference method's
(``--reference``, SimCLR) does at ``--inner-lr``. Usage (results in ``docs/results.md``)::

    python benchmarks/inner_step_scale.py --dataset omniglot-small --inner-lr 0.001

Prints a Markdown table and writes ``--out`` (JSON, one record per base method).
"""
import argparse
import json
from pathlib import Path

import torch

from gessl import GeSSL, build_model, resolve_config, training_batches
from tasks.common.errors import run_cli
from tasks.common.io import atomic_write_text
from tasks.data.registry import load_split

BASES = ["simclr", "moco", "byol", "simsiam", "barlow", "vicreg", "swav", "music"]


def relative_move(base, dataset, inner_lr, seed):
    """Loss, gradient norm, parameter norm and relative move of one inner step of ``base`` at init."""
    cfg = resolve_config({"base": base, "dataset": dataset, "seed": seed, "inner_lr": inner_lr})
    split = load_split(cfg.dataset, "background", cfg.data_root, cfg.image_size)
    model = build_model(cfg, in_channels=1, num_classes=int(split[1].max()) + 1).train()
    batch = next(training_batches(cfg, 1, split))  # training step 0's batch and its two views
    support, _ = GeSSL.from_config(cfg).task_sets(batch)[0]
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}  # what the inner loop adapts
    loss = model(support).loss
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    grad_norm = torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None)).item()
    param_norm = torch.sqrt(sum((p ** 2).sum() for p in params.values())).item()
    return {"base": base, "loss": loss.item(), "grad_norm": grad_norm, "param_norm": param_norm,
            "inner_lr": inner_lr, "relative_move": inner_lr * grad_norm / param_norm}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", default="omniglot-small", help="training set (--dataset of gessl.train)")
    parser.add_argument("--bases", nargs="+", default=BASES, help="base methods")
    parser.add_argument("--reference", default="simclr", help="the method whose move the matched α reproduces")
    parser.add_argument("--inner-lr", type=float, default=1e-3, help="α, GeSSL's inner step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/inner_step_scale.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bases = [args.reference] + [b for b in args.bases if b != args.reference]
    records = [relative_move(base, args.dataset, args.inner_lr, args.seed) for base in bases]
    target = records[0]["relative_move"]
    print(f"\n{args.dataset}, seed {args.seed}, α = {args.inner_lr:g}; matched α: the move of {args.reference}\n")
    print("| base | loss | ‖∇L‖ | ‖θ‖ | relative move | × " + args.reference + " | matched α |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for r in records:
        r["ratio"] = r["relative_move"] / target
        r["matched_inner_lr"] = args.inner_lr / r["ratio"]
        print(f"| {r['base']} | {r['loss']:.3g} | {r['grad_norm']:.3g} | {r['param_norm']:.3g} | "
              f"{r['relative_move']:.2e} | {r['ratio']:.3g} | {r['matched_inner_lr']:.2g} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(records, indent=2))


if __name__ == "__main__":
    run_cli(main)
