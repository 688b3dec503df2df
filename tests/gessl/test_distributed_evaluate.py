"""Evaluation shared by processes: two gloo processes under torchrun write what one process writes.

Each process embeds its share of every split (unequal for the 201 images of the fake MNIST test
split) and scores its share of the 31 episodes; the gathered features and per-episode values give
the records and files of one process, written once, by rank 0.
"""
import shutil
import time

import numpy as np
import pytest

from gessl import evaluate
from tasks.common.errors import UserError
from tests.helpers import jsonl
from tests.gessl.torchrun import torchrun

FLAGS = ["--suite", "quick", "--episodes", "31", "--classes", "20", "--seed", "3"]


def records(run_dir):
    return jsonl(run_dir / "results.jsonl")


def test_two_processes_evaluate_like_one_and_rank_0_alone_writes(trained_run, tmp_path, capsys):
    one, two = tmp_path / "one" / "run", tmp_path / "two" / "run"  # the same run name in both records
    for out in (one, two):
        shutil.copytree(trained_run, out)
    started = time.perf_counter()
    evaluate.main([str(one), *FLAGS])
    alone = time.perf_counter() - started
    printed = capsys.readouterr().out
    started = time.perf_counter()
    result = torchrun("gessl.evaluate", str(two), *FLAGS)
    print(f"evaluation: one process {alone:.1f} s, two under torchrun {time.perf_counter() - started:.1f} s")
    assert result.stdout.count("model ") == printed.count("model ") == 1  # rank 0 alone prints the table
    want, got = records(one), records(two)
    assert len(got) == len(want)  # one set of records: rank 1 wrote none
    assert {r["dataset"] for r in want} >= {"glyphs", "mnist"}
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if k not in ("value", "ci95", "time")} == \
            {k: v for k, v in w.items() if k not in ("value", "ci95", "time")}
        if w["protocol"] == "fewshot":  # the same episodes, classified alike
            assert (g["value"], g["ci95"]) == (w["value"], w["ci95"]), w
        else:  # σ's solver fits the episodes of a share together; the features differ by rounding
            assert (g["value"], g["ci95"]) == pytest.approx((w["value"], w["ci95"]), rel=1e-5, abs=1e-7), w
    with np.load(one / "episodes.npz") as a, np.load(two / "episodes.npz") as b:
        assert a.files == b.files and len(a.files) == 13  # fields, 2 models x 3 targets x 2 shots
        for key in a.files[1:]:
            assert a[key].shape == (31,)
            np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    with np.load(one / "feature_sample.npz") as a, np.load(two / "feature_sample.npz") as b:
        np.testing.assert_array_equal(b["index"], a["index"])
        np.testing.assert_allclose(b["features"], a["features"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["{run}", "--episodes", "0"], "--episodes must be at least 1"),
    (["{run}", "--classifiers", "svm"], "unknown classifier 'svm'"),
    (["--compare", "{run}", "{missing}"], "is not a run folder"),
])
def test_bad_flags_fail_on_every_process_before_the_process_group(trained_run, tmp_path, monkeypatch, argv, message):
    # Without torchrun's rendezvous variables, joining the group would fail with another error.
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=message):
        evaluate.main([a.format(run=trained_run, missing=tmp_path / "missing") for a in argv])
    assert not (trained_run / "results.jsonl").exists()
