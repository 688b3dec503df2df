"""Evaluation of a run folder: records, the random baseline on the same episodes, bad folders."""
import json
import subprocess
import sys

import pytest

from gessl import train
from gessl.backbones import load_backbone
from gessl.evaluate import evaluate_run
from tasks.crowding import METRICS as CROWDING_METRICS, crowding_metrics
from tasks.datasets import load_split
from tasks.errors import UserError
from tasks.fewshot import embed, evaluate_fewshot

FIELDS = {"run", "dataset", "split", "axis", "protocol", "classifier", "ways", "shots", "queries",
          "episodes", "metric", "value", "ci95", "seed", "version", "time"}
EARLIER = {"run": "run", "note": "a record from an earlier evaluation"}


@pytest.fixture(scope="module")
def evaluated(glyph_root, tmp_path_factory):
    """A two-step run, evaluated once (30 episodes, 1 and 5 shots, seed 3) after an earlier record."""
    out = tmp_path_factory.mktemp("eval") / "run"
    train.main(["--out", str(out), "--max-steps", "2", "--batch-size", "16", "--eval-episodes", "0"])
    (out / "results.jsonl").write_text(json.dumps(EARLIER) + "\n")
    return out, evaluate_run(out, episodes=30, shots=(1, 5), seed=3)


def test_records_are_appended_with_every_field(evaluated):
    run_dir, records = evaluated
    lines = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert lines == [EARLIER] + records and len(records) == 12
    assert all(r.keys() == FIELDS for r in records)
    fewshot = [r for r in records if r["protocol"] == "fewshot"]
    assert {(r["run"], r["shots"]) for r in fewshot} == {
        ("run", 1), ("run", 5), ("run (random init)", 1), ("run (random init)", 5)}
    assert all(r["split"] == "evaluation" and r["axis"] == "generalization" and r["seed"] == 3 for r in records)
    assert all(r["ways"] == 5 and r["episodes"] == 30 and r["metric"] == "accuracy" for r in fewshot)
    crowding = {(r["run"], r["metric"]) for r in records if r["protocol"] == "crowding"}
    assert crowding == {(run, metric) for run in ("run", "run (random init)") for metric in CROWDING_METRICS}


def test_crowding_records_are_the_metrics_of_the_saved_backbone(evaluated):
    run_dir, records = evaluated
    net, _ = load_backbone(run_dir / "backbone.pt")
    images, labels = load_split("glyphs", "evaluation")
    expected = crowding_metrics(embed(net, images), labels)
    for r in records:
        if r["run"] == "run" and r["protocol"] == "crowding":
            assert (r["value"], r["ci95"]) == pytest.approx(expected[r["metric"]])


def test_value_is_the_few_shot_accuracy_of_the_saved_backbone(evaluated):
    """Recomputed by hand from backbone.pt and the evaluation split on the same seeded episodes."""
    run_dir, records = evaluated
    net, _ = load_backbone(run_dir / "backbone.pt")
    images, labels = load_split("glyphs", "evaluation")
    features = embed(net, images)
    for shots in (1, 5):
        record, = [r for r in records if r["run"] == "run" and r["shots"] == shots and r["protocol"] == "fewshot"]
        expected = evaluate_fewshot(features, labels, ways=5, shots=shots, queries=15, episodes=30, seed=3)
        assert record["value"] == pytest.approx(expected["mean"])
        assert record["ci95"] == pytest.approx(expected["ci95"])
    random_init = [r["value"] for r in records if r["run"] == "run (random init)" and r["protocol"] == "fewshot"]
    assert random_init != [r["value"] for r in records if r["run"] == "run" and r["protocol"] == "fewshot"]


def test_missing_or_corrupt_run_folder_is_a_clean_error(evaluated, tmp_path):
    run_dir, _ = evaluated
    result = subprocess.run([sys.executable, "-m", "gessl.evaluate", str(tmp_path / "nothing")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "not a run folder" in result.stderr and "Traceback" not in result.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    (broken / "backbone.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match="corrupt"):
        evaluate_run(broken, episodes=5)
    assert not (broken / "results.jsonl").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"ways": 100_000}, "--ways"),
    ({"shots": (1, 10), "queries": 15}, "--shots and --queries"),
])
def test_impossible_episodes_fail_before_any_work(evaluated, kwargs, message):
    run_dir, _ = evaluated
    before = (run_dir / "results.jsonl").read_bytes()
    with pytest.raises(UserError, match=message):
        evaluate_run(run_dir, episodes=5, **kwargs)
    assert (run_dir / "results.jsonl").read_bytes() == before
