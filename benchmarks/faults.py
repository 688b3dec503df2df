"""The long variant of the fault-injection test: many real kills and interrupts, several rounds.

Runs ``tests/gessl/test_faults.py``'s random-kill test ``--rounds`` times, each with
``--kills`` signals (SIGKILL, SIGINT, SIGKILL, SIGTERM in turn, each at a random moment once the
run has logged a step of its own) and its own seed, and writes how many rounds ended bit-identical
to an uninterrupted run (and the seeds of any that did not, to replay them with
``GESSL_FAULT_SEED``). Usage::

    python benchmarks/faults.py --rounds 10 --kills 12 --out benchmarks/results/faults.json
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tasks.common.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
TEST = "tests/gessl/test_faults.py::test_random_kills_and_interrupts_then_resume_end_bit_identical_to_an_uninterrupted_run"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--kills", type=int, default=12, help="signals per round")
    parser.add_argument("--out", default="benchmarks/results/faults.json")
    args = parser.parse_args()
    rounds = []
    for r in range(args.rounds):
        seed = time.time_ns()
        started = time.time()
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST], cwd=REPO,
                                env={**os.environ, "GESSL_FAULT_KILLS": str(args.kills), "GESSL_FAULT_SEED": str(seed)},
                                capture_output=True, text=True)
        rounds.append({"seed": seed, "kills": args.kills, "identical": result.returncode == 0,
                       "seconds": round(time.time() - started, 1)})
        print(f"round {r + 1}: {'bit-identical' if rounds[-1]['identical'] else 'FAILED'} (seed {seed}, "
              f"{rounds[-1]['seconds']} s)", flush=True)
        if result.returncode:
            print(result.stdout[-4000:], file=sys.stderr)
    atomic_write_text(args.out, json.dumps(rounds, indent=2))
    failed = [r["seed"] for r in rounds if not r["identical"]]
    print(f"{len(rounds) - len(failed)} of {len(rounds)} rounds of {args.kills} signals ended bit-identical"
          + (f"; failed seeds: {failed}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
