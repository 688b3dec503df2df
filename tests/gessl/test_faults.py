"""Fault injection: a short training killed at random moments (SIGKILL, SIGINT, SIGTERM) and started
again until it ends must end bit-identical to a training that was never stopped: weights,
buffers, optimiser state, backbone.pt and the logged metrics.

The signals are real and land wherever the process happens to be: in a step's forward or backward
pass, in Adam, in a checkpoint or backbone write (one every step here), in a metrics append. Each
trial waits until the run has logged a new step, then a random 0-400 ms (8 steps of batch 16 and
their checkpoints take about that long). ``GESSL_FAULT_KILLS`` sets the number of signals (default
4); ``python benchmarks/faults.py`` runs the long variant.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
FLAGS = ["--meta", "none", "--batch-size", "16", "--max-steps", "8", "--ckpt-every", "1", "--log-every", "1",
         "--eval-episodes", "0", "--warmup-steps", "2"]
KILLS = int(os.environ.get("GESSL_FAULT_KILLS", "4"))
SIGNALS = (signal.SIGKILL, signal.SIGINT, signal.SIGKILL, signal.SIGTERM)
VOLATILE = {"time", "img_per_s"}  # logged values that measure the machine, not the training


def start(out):
    """``python -m gessl.train`` on ``out``: continued with ``--resume`` when it holds a checkpoint."""
    resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
    return subprocess.Popen([sys.executable, "-m", "gessl.train", *FLAGS, "--out", str(out), *resume], cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def logged_lines(out):
    try:
        return (out / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def interrupt_once(out, sig, rng, timeout=300):
    """Start the run, send ``sig`` a random moment after it logs a new step; return (exit status,
    stderr). The run may end first (status 0)."""
    before = logged_lines(out)  # a signal is sent only once this process has logged a step of its own
    proc = start(out)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and logged_lines(out) <= before and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.4))
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def finish(proc):
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def state_of(out):
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    del checkpoint["config"]["out"]  # the one difference of the two runs
    backbone = torch.load(out / "backbone.pt", weights_only=True)
    records = [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
               for line in (out / "metrics.jsonl").read_text().splitlines()]
    return checkpoint, backbone, records


def assert_identical(a, b, where="state"):
    """Equal nested dicts, lists and tensors, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_random_kills_and_interrupts_then_resume_end_bit_identical_to_an_uninterrupted_run(glyph_root, tmp_path):
    straight = start(tmp_path / "straight")  # the reference, beside the faulted run
    rng = random.Random(int(os.environ.get("GESSL_FAULT_SEED", time.time_ns())))
    out, seen = tmp_path / "faulted", []
    for i in range(KILLS):
        sig = SIGNALS[i % len(SIGNALS)]
        status, err = interrupt_once(out, sig, rng)
        seen.append((sig.name, status))
        if sig == signal.SIGKILL:
            assert status in (0, -signal.SIGKILL), err[-3000:]
        else:  # the step under way finishes, is saved, one line says so
            assert status in (0, 2, -sig) and "Traceback" not in err, err[-3000:]
            if status == 2:
                assert f"stopped by {sig.name} after step" in err.strip().splitlines()[-1]
            if status == -sig:  # only once main() had returned, the run complete
                assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 8
    finish(start(out))
    finish(straight)
    assert_identical(state_of(out), state_of(tmp_path / "straight"), f"after {seen}")
    assert not list(out.glob(".*.tmp"))
    assert [r["step"] for r in state_of(out)[2]] == list(range(1, 9))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_the_start_is_one_line_and_leaves_no_folder(glyph_root, tmp_path, sig):
    # Before the first step (imports, data): the run folder this start made is removed again.
    out = tmp_path / "run"
    proc = start(out)
    while proc.poll() is None and not out.exists():
        time.sleep(0.001)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in err and len(lines) == 1, err[-3000:]
    assert f"stopped by {sig.name}" in lines[0] and not out.exists()
