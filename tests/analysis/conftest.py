"""Small run folders with every file the report reads, and one report written from them.

Four trained runs, each with the random backbone that gessl.evaluate scores beside it:
- ``simclr`` (plain), ``simclr-dsa`` (+DSA), ``simclr-gessl`` (+GeSSL): config.yaml,
  metrics.jsonl, feature_sample.npz, episodes.npz; few-shot accuracy (1 and 5 shots) on two axes;
  crowding metrics and σ universality records for all models but ``simclr-gessl``;
- ``vicreg`` (plain): results.jsonl and config.yaml only.
The random backbones scored alike in every folder, so the report shows them as one model.
"""
import json
import zlib

import numpy as np
import pytest
import yaml

from analysis import report

EPISODES = 40
AXES = {"generalization": ("glyphs", "evaluation"), "discriminability": ("glyphs", "background")}
RUNS = {"simclr": ("simclr", "none", "none"), "simclr-dsa": ("simclr", "dsa", "none"),
        "simclr-gessl": ("simclr", "none", "gessl"), "vicreg": ("vicreg", "none", "none")}
CROWDING = {"intra_class_variance": 0.06, "inter_class_separation": 0.3, "crowding_ratio": 0.7,
            "crowded_share": 0.75}
DIGEST = "0123456789ab"
FIELDS = ["run", "dataset", "split", "axis", "classifier", "ways", "shots", "queries", "episodes",
          "seed", "labels"]
TIME = "2025-03-02T12:00:00+00:00"


def record(run, value, ci95, time=TIME, **fields):
    return {"run": run, "dataset": "glyphs", "split": "evaluation", "axis": "generalization",
            "protocol": "fewshot", "classifier": "proto", "ways": 5, "shots": 1, "queries": 15,
            "episodes": EPISODES, "metric": "accuracy", "value": value, "ci95": ci95, "seed": 0,
            "version": "0.1.0", "time": time, **fields}


def write_jsonl(path, records, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def episode_accuracies(model, axis, shots):
    """Per-episode accuracies (%) of a model, fixed by its name, axis and shots; the random
    backbone's are the same in every folder."""
    key = "random" if model.endswith("(random init)") else model
    seed = zlib.crc32(f"{key}/{axis}/{int(shots)}".encode())
    return np.random.default_rng(seed).integers(0, 76, EPISODES) * 100 / 75


def crowding_value(model, metric):
    shift = {"simclr": 0.0, "simclr-dsa": -0.01, "vicreg": 0.02}.get(model, 0.05)
    return CROWDING[metric] + shift


def sigma_value(model, axis):
    return {"simclr": 0.4, "simclr-dsa": 0.3, "vicreg": 0.5}.get(model, 0.6) + 0.01 * len(axis)


def build_run(root, run):
    folder = root / run
    base, reg, meta = RUNS[run]
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(
        {"base": base, "reg": reg, "meta": meta, "backbone": "conv4", "seed": 0}))
    records, episodes = [], {}
    for model in (run, f"{run} (random init)"):
        for axis, (dataset, split) in AXES.items():
            for shots in (1, 5):
                acc = episode_accuracies(model, axis, shots)
                records.append(record(model, float(acc.mean()),
                                      float(1.96 * acc.std(ddof=1) / np.sqrt(EPISODES)),
                                      shots=shots, axis=axis, dataset=dataset, split=split))
                key = [model, dataset, split, axis, "proto", 5, shots, 15, EPISODES, 0, DIGEST]
                episodes["/".join(map(str, key))] = acc
        if model != "simclr-gessl":
            for metric in CROWDING:
                records.append(record(model, crowding_value(model, metric), 0.01,
                                      protocol="crowding", metric=metric, classifier=None,
                                      ways=None, shots=None, queries=None, episodes=None))
            for axis in ("generalization", "discriminability", "overall"):
                records.append(record(model, sigma_value(model, axis), 0.02, axis=axis,
                                      protocol="universality", metric="sigma", classifier=None,
                                      ways=None, shots=None, queries=None))
    write_jsonl(folder / "results.jsonl", records)
    if run == "vicreg":
        return folder
    steps = range(10, 60, 10)
    log = []
    for step in steps:
        entry = {"step": step, "epoch": 0, "lr": 1e-3 * step / 50, "nt_xent": 5.0 - step / 20,
                 "img_per_s": 100.0, "time": 1.7e9 + step}
        entry["loss"] = entry["nt_xent"]
        if reg == "dsa":
            entry["dsa_loss"] = 0.2 - step / 1000
            entry["loss"] += entry["dsa_loss"]
        if meta == "gessl":
            entry.update(sigma_kl=0.5 - step / 200, grad_norm_sigma_kl=3.0, time_inner=0.1)
            entry["loss"] += 4 * entry["sigma_kl"]
        log.append(entry)
    write_jsonl(folder / "metrics.jsonl", log)
    rng = np.random.default_rng(len(run))
    labels = np.repeat(np.arange(5), 6)
    features = rng.normal(size=(2, 30, 8)).astype(np.float32) + labels[None, :, None]
    np.savez(folder / "feature_sample.npz", features=features,
             models=np.array([run, f"{run} (random init)"]), labels=labels,
             index=np.arange(30) * 3, dataset=np.array("glyphs"), split=np.array("evaluation"))
    np.savez(folder / "episodes.npz", fields=np.array(FIELDS), **episodes)
    return folder


@pytest.fixture(scope="session")
def full_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis") / "runs"
    for run in RUNS:
        build_run(root, run)
    return root


@pytest.fixture(scope="session")
def full_report(full_runs, tmp_path_factory):
    """The report of ``full_runs`` (written once): its folder and the notes it printed."""
    out = tmp_path_factory.mktemp("report") / "out"
    notes = report.Notes()
    df = report.load_results([full_runs], notes)
    report.write_report(df, out, notes)
    return out, list(notes)
