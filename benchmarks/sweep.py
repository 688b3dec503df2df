"""Every base method, plain, with DSA and inside GeSSL, trained on the embedded glyphs with one
budget and evaluated on the same episodes: one results table.

For each base in ``baselines.BASE_METHODS`` (or ``--bases``) and each variant (``plain``: ``--meta
none``; ``dsa``: ``--meta none --reg dsa``; ``gessl``: ``--meta gessl``), the budget is either the
same wall-clock time (``--minutes``: a short calibration times the run's steps on this machine and
the run gets ``budget / seconds_per_step`` steps, so its learning-rate schedule completes in about
that time) or the same number of steps (``--steps``: fair on a machine shared with other work,
where timings drift). The table gives each run's seconds per step, measured from its own log.
Every backbone is then evaluated on the unseen (evaluation) scripts on the same seeded episodes
(5-way 1 and 5 shots, 15 queries; mean ± 1.96 · s / √n over episodes) with the crowding ratio of
``tasks.crowding``; a random conv4 is the floor. A combination that ``gessl.train`` refuses (such as MAML inside GeSSL) is listed with its
reason.

Usage: ``python benchmarks/sweep.py --minutes 1 --out runs/sweep`` (or ``--steps 100``). Runs
already finished under ``--out`` are reused, a stopped one resumes. Writes ``results.json`` and
``results.md`` there.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from baselines import BASE_METHODS
from compare import seconds_per_step, train_and_measure
from gessl import train
from gessl.backbones import build_backbone
from gessl.config import resolve_config
from tasks.crowding import crowding_metrics
from tasks.datasets import load_split
from tasks.errors import UserError
from tasks.fewshot import embed, evaluate_fewshot, mean_ci95
from tasks.io import atomic_write_text, read_jsonl

VARIANTS = {"plain": ["--meta", "none"], "dsa": ["--meta", "none", "--reg", "dsa"], "gessl": ["--meta", "gessl"]}
SHOTS = (1, 5)


def refusal(flags):
    """Why ``gessl.train`` would refuse ``flags`` (its one-line message), or None."""
    options = train.parse_args(flags)
    options.pop("resume")
    try:
        train.check_names(resolve_config(options))
    except UserError as exc:
        return str(exc)
    return None


def summarise(measures):
    """The table's numbers from ``train_and_measure``'s episode accuracies and crowding metrics."""
    row = {f"{k}shot": mean_ci95(measures[f"accuracy_{k}shot"]) for k in SHOTS}
    row["crowding_ratio"] = measures["crowding_ratio"]
    return row


def random_floor(images, labels, episodes):
    """The same measures for a randomly initialised conv4 (seed 0)."""
    torch.manual_seed(0)
    features = embed(build_backbone("conv4", 1, 28), images)
    measures = {f"accuracy_{k}shot": evaluate_fewshot(features, labels, 5, k, 15, episodes, seed=0)["accuracies"]
                for k in SHOTS}
    return summarise({**measures, "crowding_ratio": crowding_metrics(features, labels)["crowding_ratio"][0]})


def logged_seconds_per_step(run):
    """Seconds per training step between the first and the last record of the run's metrics.jsonl."""
    records = read_jsonl(run / "metrics.jsonl")
    first, last = records[0], records[-1]
    return (last["time"] - first["time"]) / max(1, last["step"] - first["step"])


def markdown(rows, budget):
    lines = [f"Budget: {budget} of training per run; 5-way accuracy (%) on the unseen scripts, mean ± 95 % "
             "interval over the same episodes; crowding = intra-class variance / separation² (lower is better).", "",
             "| base | variant | s/step | steps | 1-shot | 5-shot | crowding |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        if "refused" in row:
            lines.append(f"| {row['base']} | {row['variant']} | – | – | refused: {row['refused']} | | |")
            continue
        shots = " | ".join(f"{m:.2f} ± {h:.2f}" for m, h in (row[f"{k}shot"] for k in SHOTS))
        cost = f"{row['seconds_per_step']:.3f} | {row['steps']}" if "steps" in row else "– | –"
        lines.append(f"| {row['base']} | {row['variant']} | {cost} | {shots} | {row['crowding_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--bases", nargs="+", default=list(BASE_METHODS), choices=list(BASE_METHODS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=1.0, help="training budget per run, in minutes")
    budget.add_argument("--steps", type=int, help="training budget per run, in steps (instead of --minutes)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every run")
    parser.add_argument("--episodes", type=int, default=600, help="evaluation episodes per shot setting")
    parser.add_argument("--calibration-steps", type=int, default=4, help="steps timed per run (--minutes)")
    parser.add_argument("--out", default="runs/sweep", help="folder for the runs and the results")
    args = parser.parse_args()
    out = Path(args.out)
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes} min"
    images, labels = load_split("glyphs", "evaluation")
    rows = [{"base": "random conv4", "variant": "–", **random_floor(images, labels, args.episodes)}]
    for base in args.bases:
        for name in args.variants:
            flags = ["--base", base, *VARIANTS[name], "--eval-episodes", "0"]
            row = {"base": base, "variant": name}
            reason = refusal(flags)
            if reason:
                rows.append({**row, "refused": reason})
                continue
            try:
                steps = args.steps or max(1, int(args.minutes * 60 / seconds_per_step(flags, args.calibration_steps)))
                measures = train_and_measure(f"{base}-{name}", [*flags, "--log-every", "5"], args.seed, steps, out,
                                             images, labels, args.episodes)
            except (UserError, RuntimeError) as exc:  # a run that fails is a finding of the sweep, not its end
                rows.append({**row, "refused": f"failed: {str(exc).splitlines()[0]}"})
                continue
            seconds = logged_seconds_per_step(out / f"{base}-{name}-seed{args.seed}")
            rows.append({**row, "seconds_per_step": seconds, "steps": steps, **summarise(measures)})
            print(markdown(rows[-1:], budget).splitlines()[-1], flush=True)
    atomic_write_text(out / "results.json", json.dumps({"budget": budget, "seed": args.seed,
                                                        "episodes": args.episodes, "rows": rows}, indent=2))
    table = markdown(rows, budget)
    atomic_write_text(out / "results.md", table)
    print(table)


if __name__ == "__main__":
    main()
