"""Evaluation of a run folder: records, the random baseline on the same episodes, bad folders."""
import json
import subprocess
import sys

import numpy as np
import pytest

from analysis.load import load_episodes, load_results
from gessl import train
from gessl.backbones import load_backbone
from gessl.evaluate import (EPISODE_FIELDS, SAMPLE_CLASSES, SAMPLE_PER_CLASS, evaluate_run,
                            feature_sample_index, labels_digest, save_episode_accuracies)
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
    saved = np.load(run_dir / "episodes.npz")
    for shots in (1, 5):
        record, = [r for r in records if r["run"] == "run" and r["shots"] == shots and r["protocol"] == "fewshot"]
        expected = evaluate_fewshot(features, labels, ways=5, shots=shots, queries=15, episodes=30, seed=3)
        assert record["value"] == pytest.approx(expected["mean"])
        assert record["ci95"] == pytest.approx(expected["ci95"])
        key = f"run/glyphs/evaluation/generalization/proto/5/{shots}/15/30/3/{labels_digest(labels)}"
        np.testing.assert_allclose(saved[key], expected["accuracies"])  # per episode, for pairing
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


def test_per_episode_accuracies_match_the_records_and_the_report_pairs_them(evaluated):
    run_dir, records = evaluated
    saved = np.load(run_dir / "episodes.npz")
    assert saved["fields"].tolist() == list(EPISODE_FIELDS)
    fewshot = [r for r in records if r["protocol"] == "fewshot"]
    assert len(saved.files) == 1 + len(fewshot)
    for r in fewshot:
        name, = [n for n in saved.files if n.startswith(f"{r['run']}/") and n.split("/")[6] == str(r["shots"])]
        entry = dict(zip(EPISODE_FIELDS, name.split("/")))
        assert {k: entry[k] for k in ("dataset", "split", "axis", "classifier", "ways", "queries", "episodes", "seed")} == {
            k: str(r[k]) for k in ("dataset", "split", "axis", "classifier", "ways", "queries", "episodes", "seed")}
        accuracies = saved[name]
        assert accuracies.shape == (30,)
        assert accuracies.mean() == pytest.approx(r["value"])
        assert 1.96 * accuracies.std(ddof=1) / np.sqrt(30) == pytest.approx(r["ci95"])
    # the report finds the run and its random backbone on the same episodes
    episodes = load_episodes(load_results([run_dir]), [])
    settings = {model: {s for m, s in episodes if m == model} for model in ("run", "run (random init)")}
    assert len(settings["run"]) == 2 and settings["run"] == settings["run (random init)"]


def test_feature_sample_holds_the_frozen_features_of_a_fixed_labelled_sample(evaluated):
    run_dir, _ = evaluated
    sample = np.load(run_dir / "feature_sample.npz")
    images, labels = load_split("glyphs", "evaluation")
    index = sample["index"]
    assert np.array_equal(index, feature_sample_index(labels, seed=3))  # depends on labels and seed only
    assert np.array_equal(sample["labels"], labels[index])
    counts = np.unique(sample["labels"], return_counts=True)[1]
    assert len(counts) == SAMPLE_CLASSES and (counts == SAMPLE_PER_CLASS).all()
    assert sample["models"].tolist() == ["run", "run (random init)"]
    assert sample["features"].dtype == np.float32 and sample["features"].shape[:2] == (2, len(index))
    net, _ = load_backbone(run_dir / "backbone.pt")
    np.testing.assert_allclose(sample["features"][0], embed(net, images[index]).numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(sample["features"][0], sample["features"][1])
    assert str(sample["dataset"]) == "glyphs" and str(sample["split"]) == "evaluation"


def test_feature_sample_takes_every_class_and_image_when_there_are_few():
    labels = np.array([7, 7, 3, 3, 3, 9, 9])
    index = feature_sample_index(labels, seed=0, classes=20, per_class=20)
    assert sorted(index.tolist()) == list(range(7))
    small = feature_sample_index(labels, seed=0, classes=2, per_class=2)
    assert len(small) == 4 and len(np.unique(labels[small])) == 2


def test_episode_file_keeps_other_entries_and_replaces_the_same_key(tmp_path):
    path = tmp_path / "episodes.npz"
    save_episode_accuracies(path, {"a/1": [1.0, 2.0], "b/1": [3.0]})
    save_episode_accuracies(path, {"a/1": [5.0], "c/1": [6.0]})
    saved = np.load(path)
    assert sorted(saved.files) == ["a/1", "b/1", "c/1", "fields"]
    assert saved["a/1"].tolist() == [5.0] and saved["b/1"].tolist() == [3.0]
    path.write_bytes(b"not a zip file")  # an unreadable old file is replaced, not a crash
    save_episode_accuracies(path, {"d/1": [7.0]})
    assert sorted(np.load(path).files) == ["d/1", "fields"]
    assert [p.name for p in tmp_path.iterdir()] == ["episodes.npz"]  # no temporary file left
