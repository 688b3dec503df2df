"""Evaluate a trained run: ``python -m gessl.evaluate RUN_DIR``.

Embeds the dataset's evaluation split (classes never seen in training) once with the frozen
backbone, then runs seeded few-shot episodes (learn2learn task samplers, prototype classifier) over
the cached features, and measures how crowded the classes are on the same features
(``tasks.crowding``: intra-class variance, inter-class separation, crowding ratio, crowded share).
A randomly initialised backbone of the same kind is evaluated alike, so the gain of training is
visible. Records are appended to ``RUN_DIR/results.jsonl``.

For the report (``analysis.report``) two files are also written, each atomically:

- ``RUN_DIR/episodes.npz``: the per-episode accuracies (%, float64 [episodes]) of every model and
  setting, one entry per key ``run/dataset/split/axis/classifier/ways/shots/queries/episodes/seed/
  labels`` (the field names in that order are the entry ``fields``; ``labels`` is a digest of the
  split's labels). Episodes depend only on the labels and these fields, so two entries that differ
  only in ``run`` scored the same episodes and can be compared paired. Entries of an earlier
  evaluation with another key are kept; an entry with the same key is replaced.
- ``RUN_DIR/feature_sample.npz``: frozen features of a small labelled sample of the split for 2-D
  maps: ``features`` float32 [models, n, D] (the run's backbone, then the random one), ``models``
  [models], ``labels`` [n], ``index`` [n] (rows of the split), ``dataset``, ``split``. The sample (up
  to ``SAMPLE_CLASSES`` classes x ``SAMPLE_PER_CLASS`` images) depends only on the labels and the
  seed, so every run evaluated with the same seed shows the same images.
"""
import argparse
import datetime
import hashlib
import zipfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from gessl.backbones import build_backbone, load_backbone
from gessl.config import read_yaml, resolve_config
from gessl.device import resolve_device
from tasks.crowding import crowding_metrics
from tasks.datasets import load_split
from tasks.errors import UserError, run_cli
from tasks.fewshot import check_episode_args, embed, evaluate_fewshot
from tasks.io import append_jsonl, atomic_path

SPLIT_AXIS = {"evaluation": "generalization"}
EPISODE_FIELDS = ("run", "dataset", "split", "axis", "classifier", "ways", "shots", "queries", "episodes",
                  "seed", "labels")
SAMPLE_CLASSES, SAMPLE_PER_CLASS = 20, 20


def labels_digest(labels):
    """A short digest of a split's labels: equal digests and episode fields mean equal episodes."""
    labels = np.asarray(labels)
    data = "\n".join(map(str, labels)).encode() if labels.dtype == object else np.ascontiguousarray(labels).tobytes()
    return hashlib.sha256(data).hexdigest()[:12]


def episode_key(**fields):
    """The ``episodes.npz`` entry name of one model and setting: its fields joined by '/'."""
    return "/".join(str(fields[name]) for name in EPISODE_FIELDS)


def _savez(path, arrays):
    """``np.savez`` of ``arrays`` into ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def save_episode_accuracies(path, accuracies):
    """Merge ``{episode_key: accuracies}`` into the ``episodes.npz`` at ``path`` (written atomically).

    Entries already there with other keys are kept; an unreadable old file is replaced.
    """
    arrays = {}
    if Path(path).is_file():
        try:
            with np.load(path) as old:
                arrays = {name: old[name] for name in old.files if name != "fields"}
        except (OSError, ValueError, zipfile.BadZipFile):
            arrays = {}
    arrays.update({key: np.asarray(values, dtype=np.float64) for key, values in accuracies.items()})
    _savez(path, {"fields": np.array(EPISODE_FIELDS), **arrays})


def feature_sample_index(labels, seed, classes=SAMPLE_CLASSES, per_class=SAMPLE_PER_CLASS):
    """Rows of a sample of up to ``classes`` classes x ``per_class`` images, drawn with ``seed``."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    names = np.unique(labels)
    chosen = np.sort(rng.choice(len(names), size=min(classes, len(names)), replace=False))
    rows = []
    for name in names[chosen]:
        members = np.flatnonzero(labels == name)
        rows.append(np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False)))
    return np.concatenate(rows)


def evaluate_run(run_dir, episodes=600, ways=5, shots=(1, 5), queries=15, seed=0, device="auto",
                 classifier="proto"):
    """Few-shot accuracy and crowding metrics of the run's backbone and of a random one.

    Appends the records to ``run_dir/results.jsonl`` and returns them. Crowding records have
    ``protocol`` "crowding" and no classifier, ways, shots, queries or episodes.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml); train one with "
                        f"`python -m gessl.train --out {run_dir}`")
    cfg = resolve_config(read_yaml(run_dir / "config.yaml"))
    dev = resolve_device(device)
    backbone, meta = load_backbone(run_dir / "backbone.pt")
    torch.manual_seed(seed)
    random_backbone = build_backbone(cfg.backbone, meta["in_channels"], cfg.image_size)
    split = "evaluation"
    images, labels = load_split(cfg.dataset, split, cfg.data_root, cfg.image_size)
    for k in shots:
        check_episode_args(labels, ways, k, queries, episodes)
    common = {"dataset": cfg.dataset, "split": split, "axis": SPLIT_AXIS[split], "protocol": "fewshot",
              "classifier": classifier, "ways": ways, "queries": queries, "episodes": episodes,
              "metric": "accuracy", "seed": seed, "version": version("gessl")}
    records, accuracies, samples = [], {}, []
    sample = feature_sample_index(labels, seed)
    digest = labels_digest(labels)
    names = [run_dir.name, f"{run_dir.name} (random init)"]
    for name, net in zip(names, [backbone, random_backbone]):
        features = embed(net.to(dev), images, device=dev)
        samples.append(features[sample].numpy().astype(np.float32))
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        for k in shots:
            result = evaluate_fewshot(features, labels, ways=ways, shots=k, queries=queries,
                                      episodes=episodes, seed=seed, classifier=classifier)
            records.append({"run": name, **common, "shots": k, "value": result["mean"], "ci95": result["ci95"],
                            "time": now})
            accuracies[episode_key(**common, run=name, shots=k, labels=digest)] = result["accuracies"]
        for metric, (value, ci95) in crowding_metrics(features, labels).items():
            records.append({"run": name, **common, "protocol": "crowding", "classifier": None, "ways": None,
                            "queries": None, "episodes": None, "shots": None, "metric": metric, "value": value,
                            "ci95": ci95, "time": now})
    append_jsonl(run_dir / "results.jsonl", records)
    save_episode_accuracies(run_dir / "episodes.npz", accuracies)
    _savez(run_dir / "feature_sample.npz", {
        "features": np.stack(samples), "models": np.array(names), "labels": np.asarray(labels)[sample],
        "index": sample, "dataset": np.array(cfg.dataset), "split": np.array(split)})
    return records


def print_table(records):
    """Print few-shot accuracies and crowding metrics as a small aligned table."""
    width = max(len(r["run"]) for r in records)
    print(f"{'model':<{width}}  {'measure':<26}  value")
    for r in records:
        if r["protocol"] == "fewshot":
            measure, value = f"{r['ways']}-way {r['shots']}-shot accuracy (%)", f"{r['value']:6.2f} ± {r['ci95']:.2f}"
        else:
            measure, value = r["metric"], f"{r['value']:6.3f} ± {r['ci95']:.3f}"
        print(f"{r['run']:<{width}}  {measure:<26}  {value}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gessl.evaluate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run_dir", help="run folder written by `python -m gessl.train`")
    parser.add_argument("--episodes", type=int, default=600, help="episodes per setting")
    parser.add_argument("--ways", type=int, default=5, help="classes per episode")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="labelled examples per class")
    parser.add_argument("--queries", type=int, default=15, help="query examples per class")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episodes and of the random backbone")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to embed")
    args = parser.parse_args(argv)
    records = evaluate_run(args.run_dir, episodes=args.episodes, ways=args.ways, shots=args.shots,
                           queries=args.queries, seed=args.seed, device=args.device)
    print_table(records)


if __name__ == "__main__":
    run_cli(main)
