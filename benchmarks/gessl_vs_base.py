"""SimCLR vs SimCLR + GeSSL on the embedded glyphs under the same wall-clock budget.

For each seed, both variants (``--meta none`` and ``--meta gessl``) are trained for the same number
of minutes: a short calibration measures each one's seconds per step on this machine, and each run
gets ``budget / seconds_per_step`` steps (so the learning-rate schedule completes). Each backbone is
then evaluated on the unseen (evaluation) scripts on the same seeded episodes (5-way, 1 and 5
shots, 15 queries), and the paired difference GeSSL − base is reported

- per seed (difference of mean accuracies),
- across seeds: mean ± t₀.₉₇₅(n−1) · s / √n over the per-seed differences,
- pooled over episodes: mean ± 1.96 · s / √n over every (seed, episode) difference.

Usage: ``python benchmarks/gessl_vs_base.py --seeds 0 1 2 --minutes 3 --out runs/gessl-vs-base``.
Writes each run folder under ``--out`` and a ``summary.json``; prints a table.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.stats

from gessl import train
from gessl.backbones import load_backbone
from gessl.config import resolve_config
from tasks.datasets import load_split
from tasks.fewshot import embed, evaluate_fewshot
from tasks.io import atomic_write_text

VARIANTS = ("none", "gessl")


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per run")
    parser.add_argument("--episodes", type=int, default=600, help="evaluation episodes per setting")
    parser.add_argument("--calibration-steps", type=int, default=8, help="steps timed per variant")
    parser.add_argument("--out", default="runs/gessl-vs-base", help="folder for the runs and summary.json")
    parser.add_argument("flags", nargs=argparse.REMAINDER, help="extra flags for gessl.train (after --)")
    args = parser.parse_args()
    extra = [f for f in args.flags if f != "--"]
    out = Path(args.out)
    images, labels = load_split("glyphs", "evaluation")
    step_seconds = {m: seconds_per_step(["--meta", m, "--eval-episodes", "0", *extra], args.calibration_steps)
                    for m in VARIANTS}
    steps = {m: max(1, int(args.minutes * 60 / s)) for m, s in step_seconds.items()}
    print("seconds per step:", step_seconds, "steps:", steps, flush=True)
    accuracies = {}
    for seed in args.seeds:
        for meta in VARIANTS:
            run = out / f"{meta}-seed{seed}"
            if not (run / "backbone.pt").exists() or not (run / "done").exists():
                flags = ["--meta", meta, "--seed", str(seed), "--max-steps", str(steps[meta]), "--epochs", "1000",
                         "--eval-episodes", "0", "--out", str(run), *extra]
                if (run / "checkpoint.pt").exists():
                    flags.append("--resume")
                train.main(flags)
                (run / "done").touch()
            net, _ = load_backbone(run / "backbone.pt")
            features = embed(net, images)
            for shots in (1, 5):
                accuracies[meta, seed, shots] = evaluate_fewshot(features, labels, 5, shots, 15, args.episodes,
                                                                 seed=0)["accuracies"]
    summary = {"minutes": args.minutes, "seconds_per_step": step_seconds, "steps": steps,
               "seeds": args.seeds, "episodes": args.episodes, "extra_flags": extra, "results": {}}
    for shots in (1, 5):
        per_seed = [float(accuracies["gessl", s, shots].mean() - accuracies["none", s, shots].mean())
                    for s in args.seeds]
        pooled = np.concatenate([accuracies["gessl", s, shots] - accuracies["none", s, shots] for s in args.seeds])
        n = len(per_seed)
        half = scipy.stats.t.ppf(0.975, n - 1) * np.std(per_seed, ddof=1) / np.sqrt(n) if n > 1 else float("nan")
        summary["results"][f"5way{shots}shot"] = {
            "base": [float(accuracies["none", s, shots].mean()) for s in args.seeds],
            "gessl": [float(accuracies["gessl", s, shots].mean()) for s in args.seeds],
            "diff_per_seed": per_seed, "diff_mean": float(np.mean(per_seed)), "diff_ci95_seeds": float(half),
            "diff_ci95_episodes": float(1.96 * pooled.std(ddof=1) / np.sqrt(pooled.size))}
        r = summary["results"][f"5way{shots}shot"]
        print(f"5-way {shots}-shot: base {np.round(r['base'], 2).tolist()}  gessl {np.round(r['gessl'], 2).tolist()}  "
              f"diff {r['diff_mean']:+.2f} ± {r['diff_ci95_seeds']:.2f} (seeds), ± {r['diff_ci95_episodes']:.2f} (episodes)")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
