"""Variants of a training run compared on the embedded glyphs under the same wall-clock budget.

Each variant is a set of ``gessl.train`` flags, named ``NAME=FLAGS`` (default: ``simclr="--meta
none"``, ``gessl="--meta gessl"``, ``dsa="--meta none --reg dsa"``); the first is the reference. For
each seed, every variant trains for the same number of minutes: a short calibration measures each
one's seconds per step on this machine, and each run gets ``budget / seconds_per_step`` steps (so
its learning-rate schedule completes). Each backbone is then evaluated on the unseen (evaluation)
scripts on the same seeded episodes (5-way, 1 and 5 shots, 15 queries) and with the crowding
metrics of ``tasks.crowding``. Reported, for each variant:

- its mean per seed, and across seeds mean ± t₀.₉₇₅(n−1) · s / √n;
- the paired difference variant − reference: per seed, across seeds (as above), and for accuracy
  also pooled over episodes: mean ± 1.96 · s / √n over every (seed, episode) difference.

Usage: ``python benchmarks/compare.py --seeds 0 1 2 --minutes 2.5 --out runs/compare``, or with
``--variant NAME="FLAGS"`` given several times. Runs already finished under ``--out`` are reused;
a stopped one resumes. Writes ``summary.json`` there and prints the tables.
"""
import argparse
import json
import shlex
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.stats

from gessl import train
from gessl.backbones import load_backbone
from gessl.config import resolve_config
from tasks.crowding import crowding_metrics
from tasks.datasets import load_split
from tasks.fewshot import embed, evaluate_fewshot
from tasks.io import atomic_write_text

DEFAULT_VARIANTS = ["simclr=--meta none", "gessl=--meta gessl", "dsa=--meta none --reg dsa"]
SHOTS = (1, 5)


def seconds_per_step(flags, steps):
    """Median seconds of a training step of ``flags``, measured on ``steps`` steps after one warm-up."""
    options = train.parse_args(flags)
    options.pop("resume")
    with tempfile.TemporaryDirectory() as scratch:  # train_step writes nothing; the folder is a formality
        trainer = train.Trainer(resolve_config(options), scratch)
        trainer.total_steps = steps + 1
        trainer.train_step()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def interval(values):
    """Mean and half-width t₀.₉₇₅(n−1) · s / √n of ``values`` (NaN width for one value)."""
    n = len(values)
    half = scipy.stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / np.sqrt(n) if n > 1 else float("nan")
    return float(np.mean(values)), float(half)


def train_and_measure(name, flags, seed, steps, out, images, labels, episodes):
    """Train (or reuse) the run of one variant and seed; its episode accuracies and crowding metrics."""
    run = out / f"{name}-seed{seed}"
    if not (run / "done").exists():
        args = [*flags, "--seed", str(seed), "--max-steps", str(steps), "--epochs", "1000", "--eval-episodes", "0",
                "--out", str(run)]
        train.main(args + (["--resume"] if (run / "checkpoint.pt").exists() else []))
        (run / "done").touch()
    net, _ = load_backbone(run / "backbone.pt")
    features = embed(net, images)
    measures = {f"accuracy_{k}shot": evaluate_fewshot(features, labels, 5, k, 15, episodes, seed=0)["accuracies"]
                for k in SHOTS}
    measures.update({metric: value for metric, (value, _) in crowding_metrics(features, labels).items()})
    return measures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--variant", action="append", help="NAME=FLAGS, repeatable; the first is the reference "
                        f"(default: {DEFAULT_VARIANTS})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--minutes", type=float, default=2.5, help="training budget per run")
    parser.add_argument("--episodes", type=int, default=600, help="evaluation episodes per setting")
    parser.add_argument("--calibration-steps", type=int, default=8, help="steps timed per variant")
    parser.add_argument("--out", default="runs/compare", help="folder for the runs and summary.json")
    args = parser.parse_args()
    variants = dict(v.split("=", 1) for v in (args.variant or DEFAULT_VARIANTS))
    flags = {name: shlex.split(f) for name, f in variants.items()}
    out = Path(args.out)
    images, labels = load_split("glyphs", "evaluation")
    step_seconds = {name: seconds_per_step([*f, "--eval-episodes", "0"], args.calibration_steps)
                    for name, f in flags.items()}
    steps = {name: max(1, int(args.minutes * 60 / s)) for name, s in step_seconds.items()}
    print("seconds per step:", step_seconds, "steps:", steps, flush=True)
    measured = {(name, seed): train_and_measure(name, f, seed, steps[name], out, images, labels, args.episodes)
                for seed in args.seeds for name, f in flags.items()}
    reference = next(iter(flags))
    summary = {"minutes": args.minutes, "variants": variants, "seconds_per_step": step_seconds, "steps": steps,
               "seeds": args.seeds, "episodes": args.episodes, "results": {}}
    for measure in measured[reference, args.seeds[0]]:
        accuracy = measure.startswith("accuracy")
        print(f"\n{measure}" + (" (%)" if accuracy else ""))
        rows = {}
        for name in flags:
            per_seed = [float(np.mean(measured[name, s][measure])) for s in args.seeds]
            diffs = [v - float(np.mean(measured[reference, s][measure])) for v, s in zip(per_seed, args.seeds)]
            row = {"per_seed": per_seed, "mean_ci95": interval(per_seed), "diff_per_seed": diffs,
                   "diff_mean_ci95": interval(diffs)}
            if accuracy:
                pooled = np.concatenate([measured[name, s][measure] - measured[reference, s][measure]
                                         for s in args.seeds])
                row["diff_ci95_episodes"] = float(1.96 * pooled.std(ddof=1) / np.sqrt(pooled.size))
            rows[name] = row
            (m, h), (d, dh) = row["mean_ci95"], row["diff_mean_ci95"]
            print(f"  {name:<10} {m:8.3f} ± {h:.3f}   per seed {np.round(per_seed, 3).tolist()}   "
                  f"− {reference}: {d:+.3f} ± {dh:.3f}" +
                  (f" (seeds), ± {row['diff_ci95_episodes']:.3f} (episodes)" if accuracy else " (seeds)"))
        summary["results"][measure] = rows
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
