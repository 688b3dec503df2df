"""Run folders under concurrent use and bad input (docs/run_folders.md), with real processes.

- Two ``gessl.evaluate`` started together on one run folder, several times, their imports done
  before either begins (a file both wait for): at one moment both hold the folder's evaluation lock
  (the kernel's ``/proc/locks``), so they evaluate side by side; every record of both is in
  ``results.jsonl``, every line whole, and ``episodes.npz`` holds the entries of both.
- ``gessl.evaluate A B`` holds the evaluation locks of both folders at once: each is taken when the
  folders are checked, before any work, and held to the end.
- ``gessl.evaluate`` beside a running ``gessl.train`` is refused and writes nothing; evaluated once
  the training ends, its records name the training step and the SHA-256 of the backbone they scored.
- The workflow train → evaluate → report (the commands' ``main``) with tiny sizes ends with a report
  whose figures draw the run's name, ``$`` and all, as written.
- Each bad input is one line and exit status 2, with nothing written in the run folder and nothing
  outside it touched.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from analysis import report
from gessl import evaluate, train
from tasks.common.errors import run_cli
from tasks.data import cli as data_cli
from tests.helpers import REPO, drawn_text, jsonl

EVALUATE = ["--suite", "quick", "--axes", "generalization", "--episodes", "4", "--classes", "10", "--shots", "1"]
REPEATS = 2
# ``python -m gessl.evaluate ARGS`` (its ``main`` as its ``__main__`` runs it) in a process given
# ``READY GO ARGS``: once imported it creates the file READY, then waits for the file GO to exist.
AT_GO = ("import pathlib, sys, time\n"
         "from gessl import evaluate\n"
         "from tasks.common.errors import run_cli\n"
         "ready, go = map(pathlib.Path, sys.argv[1:3])\n"
         "ready.touch()\n"
         "while not go.exists():\n"
         "    time.sleep(0.01)\n"
         "run_cli(evaluate.main, sys.argv[3:])\n")


def command(module, *args):
    return [sys.executable, "-m", module, *map(str, args)]


def popen(module, *args):
    return subprocess.Popen(command(module, *args), cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def snapshot(folder):
    """Every file under ``folder`` (links as links) with its bytes or target."""
    found = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_symlink():
            found[str(path)] = ("link", os.readlink(path))
        elif path.is_file():
            found[str(path)] = path.read_bytes()
    return found


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A fresh copy of the session's two-step run folder (named ``run``), inside ``tmp_path/runs``."""
    copy = tmp_path / "runs" / "run"
    shutil.copytree(trained_run, copy)
    return copy


def lock_holders(path):
    """The ids of the processes holding a ``flock`` on the file ``path`` now, as the kernel lists them
    (``/proc/locks``; a process waiting for one is not listed as holding it)."""
    where = os.stat(path)
    inode = f"{os.major(where.st_dev):02x}:{os.minor(where.st_dev):02x}:{where.st_ino}"
    return {int(fields[4]) for fields in map(str.split, Path("/proc/locks").read_text().splitlines())
            if fields[1] == "FLOCK" and fields[5] == inode}


def test_two_evaluations_started_together_keep_every_record_of_both(run_copy, data_root, tmp_path):
    written = {}
    for repeat in range(REPEATS):
        go = tmp_path / f"go-{repeat}"
        ready, outs, errs = ({seed: tmp_path / f"{what}-{repeat}-{seed}" for seed in (0, 1)}
                             for what in ("ready", "out", "err"))
        procs = {}
        for seed in (0, 1):
            with open(outs[seed], "w") as out, open(errs[seed], "w") as err:  # files: no pipe fills up
                procs[seed] = subprocess.Popen(
                    [sys.executable, "-c", AT_GO, ready[seed], go, run_copy, *EVALUATE, "--seed", str(seed),
                     "--data-root", data_root], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=out,
                    stderr=err)
        deadline = time.monotonic() + 300
        while not all(r.exists() for r in ready.values()) and time.monotonic() < deadline:
            for seed, proc in procs.items():
                assert proc.poll() is None, errs[seed].read_text()[-2000:]
            time.sleep(0.01)
        go.touch()
        together, deadline = False, time.monotonic() + 600
        while any(proc.poll() is None for proc in procs.values()) and time.monotonic() < deadline:
            together = together or {proc.pid for proc in procs.values()} <= lock_holders(run_copy / ".lock")
            time.sleep(0.005)
        for seed, proc in procs.items():
            assert proc.wait(timeout=1) == 0, errs[seed].read_text()[-2000:]
            rows = len(outs[seed].read_text().strip().splitlines()) - 1  # the table: a header, one row a record
            written[seed] = written.get(seed, 0) + rows
        assert together  # at one moment both held the folder's evaluation lock: both were evaluating
    lines = (run_copy / "results.jsonl").read_text().split("\n")
    assert lines.pop() == ""  # ends with a whole line
    records = [json.loads(line) for line in lines]  # every line valid
    assert written[0] == written[1] > 0
    assert [sum(r["seed"] == seed for r in records) for seed in (0, 1)] == [written[0], written[1]]
    with np.load(run_copy / "episodes.npz") as saved:
        fields = saved["fields"].tolist()
        keys = [dict(zip(fields, name.split("/"))) for name in saved.files if name != "fields"]
    by_seed = {seed: {tuple(v for f, v in k.items() if f not in ("seed", "labels")) for k in keys
                      if k["seed"] == str(seed)} for seed in (0, 1)}  # the seed draws the classes: other labels
    assert by_seed[0] and by_seed[0] == by_seed[1]


def test_an_evaluation_of_two_folders_holds_both_locks_from_its_start(run_copy, data_root):
    other = run_copy.parent / "other"
    shutil.copytree(run_copy, other)
    proc = popen("gessl.evaluate", run_copy, other, *EVALUATE, "--data-root", data_root)
    both, deadline = False, time.monotonic() + 600
    while not both and proc.poll() is None and time.monotonic() < deadline:
        both = proc.pid in lock_holders(run_copy / ".lock") & lock_holders(other / ".lock")
        time.sleep(0.005)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert both  # while it evaluated the first, the second was held too: no training could start on it
    assert {r["run"] for r in jsonl(other / "results.jsonl")} == {"other", "other (random init)"}


def test_a_folder_being_trained_is_refused_then_evaluated_with_its_step_and_backbone(data_root, tmp_path, capsys):
    out = tmp_path / "training"
    proc = popen("gessl.train", "--meta", "none", "--batch-size", "16", "--max-steps", "100000", "--log-every", "1",
                 "--eval-episodes", "0", "--data-root", data_root, "--out", out)
    try:
        deadline = time.monotonic() + 300
        while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            _evaluate_cli(out, *EVALUATE, "--data-root", data_root)
        assert stop.value.code == 2 and "is being trained" in one_line(capsys.readouterr().err)
        assert not [n for n in evaluate.WRITTEN if (out / n).exists()]  # the training goes on; nothing evaluated
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=300)
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    records = evaluate.evaluate_run(out, "quick", axes=("generalization",), episodes=4, classes=10, shots=(1,),
                                    data_root=data_root)
    digest = hashlib.sha256((out / "backbone.pt").read_bytes()).hexdigest()
    trained = [r for r in jsonl(out / "results.jsonl") if r["run"] == "training"]
    assert trained and len(trained) == len([r for r in records if r["run"] == "training"])
    assert {(r["train_step"], r["backbone_sha256"]) for r in trained} == {(step, digest)}
    assert {r["train_step"] for r in jsonl(out / "results.jsonl") if r["run"] == "training (random init)"} == {0}


def test_train_evaluate_report_workflow_ends_with_a_report(data_root, tmp_path):
    """The workflow's three commands (their ``main``, as ``python -m`` runs them), with a ``$`` in the run
    name; the closing check of the training records the quick suite, the evaluation the standard one."""
    out = tmp_path / "runs" / "wf_${BASE}_$SEED"
    train.main(["--meta", "none", "--max-steps", "2", "--batch-size", "16", "--eval-episodes", "10",
                "--data-root", str(data_root), "--out", str(out)])
    evaluate.main([str(out), "--episodes", "10", "--classes", "10", "--axes", "generalization"])
    report.main([str(out), "--out", str(tmp_path / "rep")])
    assert (tmp_path / "rep" / "index.html").is_file() and (tmp_path / "rep" / "fig1_fewshot_accuracy.png").is_file()
    for pdf in sorted((tmp_path / "rep").glob("*.pdf")):  # each `$` drawn as a `$`: no mathtext, no `\`
        named = {text for text in drawn_text(pdf) if "wf_" in text}
        assert named and named <= {"wf_${BASE}_$SEED", "wf_${BASE}_$SEED (random init)"}, (pdf.name, named)
    table = pd.read_csv(tmp_path / "rep" / "results.csv")
    fewshot = table[(table["protocol"] == "fewshot") & (table["run"] == out.name)]
    assert set(fewshot["suite"]) == {"quick", "standard"}


def _evaluate_cli(*args):
    return run_cli(evaluate.main, [str(a) for a in args])


def _train_cli(*args):
    return run_cli(train.main, [str(a) for a in args])


def _data_cli(*args):
    return run_cli(data_cli.main, [str(a) for a in args])


def _not_utf8(path):
    path.write_bytes(path.read_bytes() + b"# \xff\xfe\n")


def _other_backbone(run, outside):
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("backbone: conv4", "backbone: resnet18"))


def _config_not_utf8(run, outside):
    shutil.copy(run / "config.yaml", outside / "c.yaml")
    _not_utf8(outside / "c.yaml")


def _lock_out(run, outside):
    (run / ".lock").unlink()
    (run / ".lock").symlink_to(outside / "made.lock")


def _nothing(run, outside):
    pass


# case: (spoil(run folder, outside), command(run folder, data root, outside), what the one line says)
BAD_INPUTS = {
    "evaluate --seed -1": (_nothing, lambda run, root, outside: _evaluate_cli(run, *EVALUATE, "--seed", -1),
                           "--seed must be in [0, 4294967295], got -1"),
    "evaluate --seed 2**63": (_nothing, lambda run, root, outside: _evaluate_cli(run, *EVALUATE, "--seed", 2 ** 63),
                              "--seed must be in"),
    "train --seed -1": (_nothing, lambda run, root, outside: _train_cli("--out", outside / "new", "--seed", -1),
                        "--seed must be in"),
    "train --seed 2**63": (_nothing, lambda run, root, outside: _train_cli("--out", outside / "new", "--seed", 2 ** 63),
                           "--seed must be in"),
    "config.yaml not UTF-8": (lambda run, outside: _not_utf8(run / "config.yaml"),
                              lambda run, root, outside: _evaluate_cli(run, *EVALUATE, "--data-root", root),
                              "config.yaml is not UTF-8 text"),
    "--config not UTF-8": (_config_not_utf8,
                           lambda run, root, outside: _train_cli("--config", outside / "c.yaml", "--out", outside / "new"),
                           "c.yaml is not UTF-8 text"),
    "metrics.jsonl not UTF-8 on --resume": (
        lambda run, outside: _not_utf8(run / "metrics.jsonl"),
        lambda run, root, outside: _train_cli("--out", run, "--resume", "--max-steps", 3, "--data-root", root),
        "metrics.jsonl is not UTF-8 text"),
    "no requested axis has data": (
        _nothing, lambda run, root, outside: _evaluate_cli(run, *EVALUATE[:2], "--axes", "transferability", "--offline",
                                                           "--data-root", outside / "empty-data"),
        "none of the axes asked for (transferability) has data"),
    "config.yaml names another backbone": (
        _other_backbone, lambda run, root, outside: _evaluate_cli(run, *EVALUATE, "--data-root", root),
        "names backbone resnet18 at 28 px but"),
    "results.jsonl a symlink out": (
        lambda run, outside: (run / "results.jsonl").symlink_to(outside / "theirs.jsonl"),
        lambda run, root, outside: _evaluate_cli(run, *EVALUATE, "--data-root", root),
        "results.jsonl is a symbolic link"),
    "metrics.jsonl a symlink out on --resume": (
        lambda run, outside: ((run / "metrics.jsonl").unlink(), (run / "metrics.jsonl").symlink_to(outside / "theirs.jsonl")),
        lambda run, root, outside: _train_cli("--out", run, "--resume", "--max-steps", 3, "--data-root", root),
        "metrics.jsonl is a symbolic link"),
    ".lock a symlink out": (_lock_out, lambda run, root, outside: _evaluate_cli(run, *EVALUATE, "--data-root", root),
                            ".lock is a symbolic link"),
    "tasks.data --data-root a file": (
        _nothing, lambda run, root, outside: _data_cli("--data-root", outside / "theirs.jsonl", "list", "--quick"),
        "is a file, not a folder"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_each_bad_input_is_one_line_and_exit_2_with_nothing_written_or_lost(case, run_copy, data_root, tmp_path,
                                                                             capsys):
    outside = tmp_path / "outside"
    (outside / "empty-data").mkdir(parents=True)
    (outside / "theirs.jsonl").write_text('{"keep": 1}\n{"unterminated": 2}')
    spoil, act, message = BAD_INPUTS[case]
    spoil(run_copy, outside)
    before = snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        act(run_copy, data_root, outside)
    assert stop.value.code == 2
    assert message in one_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before  # nothing written in the run folder or outside it
    assert not (outside / "made.lock").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file whatever its permissions")
def test_an_unreadable_entry_of_the_data_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0)
    with pytest.raises(SystemExit) as stop:
        _data_cli("--data-root", tmp_path, "list", "--quick")
    assert stop.value.code == 2 and "permission denied" in one_line(capsys.readouterr().err)
