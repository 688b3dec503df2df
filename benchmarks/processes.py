"""Training throughput on 1 vs N processes: ``torchrun --nproc_per_node N -m gessl.train``.

Each setting is a real training run (glyphs, augmentation and logging included) started with
torchrun, for ``--steps`` steps of the global batch ``--batch-size``. The cores are shared out:
N processes get ``--cores`` / N threads each (``OMP_NUM_THREADS``), so 1 process with 2 threads is
compared with 2 processes with 1 thread on a 2-core machine. Throughput is the median of the run's
logged ``img_per_s`` (``metrics.jsonl``, every ``--log-every`` steps) after the first log, which
holds the start-up. Settings run interleaved ``--rounds`` times; the median over rounds is reported
with its ratio to the same variant on 1 process.

Variants: SimCLR (``--meta none``), SimCLR + DSA, and SimCLR + GeSSL with ``--tasks-per-step 2``
(each of 2 processes adapts to one task). Usage (results in ``docs/results.md``)::

    python benchmarks/processes.py --processes 1 2 --steps 40 --rounds 2
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from tasks.common.io import atomic_write_text

VARIANTS = {"simclr": ["--meta", "none"], "simclr + DSA": ["--meta", "none", "--reg", "dsa"],
            "simclr + GeSSL": ["--meta", "gessl", "--tasks-per-step", "2"]}


def throughput(flags, processes, threads, args):
    """Median logged images/s of one torchrun training run, its first log left out."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   "-m", "gessl.train", "--base", "simclr", *flags, "--batch-size", str(args.batch_size),
                   "--max-steps", str(args.steps), "--log-every", str(args.log_every), "--eval-episodes", "0",
                   "--ckpt-every", str(10 * args.steps), "--out", out]
        result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode:
            sys.exit(f"training on {processes} process(es) failed:\n{result.stderr[-3000:]}")
        rates = [json.loads(line)["img_per_s"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(rates[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="threads shared out over the processes")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every setting")
    parser.add_argument("--out", default="benchmarks/results/processes.json")
    args = parser.parse_args()
    if args.steps < 2 * args.log_every:
        parser.error(f"--steps must be at least twice --log-every ({args.log_every}): the first log is left out")
    todo = [(v, n) for v in args.variants for n in args.processes]
    samples = {setting: [] for setting in todo}
    for r in range(args.rounds):
        for variant, n in todo:
            rate = throughput(VARIANTS[variant], n, max(1, args.cores // n), args)
            samples[variant, n].append(rate)
            print(f"round {r + 1}/{args.rounds} {variant:<16} {n} process(es): {rate:.0f} img/s", flush=True)
    records = [{"variant": v, "processes": n, "threads_per_process": max(1, args.cores // n),
                "batch_size": args.batch_size, "images_per_s": statistics.median(samples[v, n]),
                "rounds": samples[v, n]} for v, n in todo]
    one = {r["variant"]: r["images_per_s"] for r in records if r["processes"] == 1}
    print(f"\ntorch {torch.__version__}, {args.cores} cores, global batch {args.batch_size}\n")
    print("| variant | processes × threads | img/s | × 1 process |\n|---|---|---|---|")
    for r in records:
        r["ratio"] = r["images_per_s"] / one[r["variant"]] if r["variant"] in one else None
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "–"
        print(f"| {r['variant']} | {r['processes']} × {r['threads_per_process']} | {r['images_per_s']:.0f} | {ratio} |")
    atomic_write_text(args.out, json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
