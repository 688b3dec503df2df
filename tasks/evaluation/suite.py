"""The universality suite: which data each axis uses and what is measured on it, at what cost.

GeSSL (Wang et al., arXiv 2405.01053) calls a representation universal when it discriminates the
classes it was trained on, generalises to unseen classes of the same domain and transfers to other
domains. For a model trained on dataset D (``docs/evaluation.md``):

- discriminability: held-out images of D's training classes (``Dataset.heldout_split``; the
  glyph sets draw their background classes again with another seed);
- generalization: D's classes never seen in training (``Dataset.eval_split``, or the installed
  ``Dataset.generalization`` sets: Lake's one-shot runs and Omniglot's evaluation alphabets for a
  model trained on Omniglot's minimal sets);
- transferability: every installed dataset of another domain (``tasks.data.registry.transfer_targets``),
  on its evaluation split.

On each (axis, dataset) the suite runs few-shot episodes (``tasks.evaluation.fewshot``), the σ universality
score (``tasks.evaluation.universality``) and the crowding metrics (``tasks.evaluation.crowding``), or, on Lake's
one-shot runs (``omniglot-lake``), their 20-way 1-shot nearest-neighbour error (``tasks.evaluation.lake``); where the dataset also
has labelled training images of the same classes (the glyphs' background split for their held-out
images, MNIST's or CIFAR's train split) a linear probe and kNN (``tasks.evaluation.linear``) too.

Named suites trade cost for precision; ``standard`` is the default. Large splits are subsampled
with the suite's seed (``classes`` classes per split, ``per_class`` images per class for the
episodes and crowding, ``probe_classes`` classes and ``probe_train`` training images for the probe
and kNN) so every model sees the same images.
"""
from dataclasses import dataclass

import numpy as np

from tasks.data.registry import get_dataset, transfer_targets

# The reference models ``gessl.evaluate`` scores beside every run RUN, named RUN + suffix.
RANDOM_SUFFIX = " (random init)"  # the run's backbone at a seeded random initialisation
PIXELS_SUFFIX = " (pixels: modified Hausdorff)"  # the pixel baseline on Lake's one-shot runs

AXES = ("discriminability", "generalization", "transferability")


@dataclass(frozen=True)
class Suite:
    """What an evaluation measures. ``sigma_shots``: shot settings with a σ score (using the first
    of ``classifiers``); ``None`` in a cap means no cap."""

    name: str
    episodes: int
    shots: tuple[int, ...]
    classifiers: tuple[str, ...]
    sigma_shots: tuple[int, ...]
    per_class: int | None
    probe: bool
    probe_classes: int | None
    probe_train: int | None
    axes: tuple[str, ...] = AXES
    classes: int | None = None
    ways: int = 5
    queries: int = 15
    knn_k: tuple[int, ...] = (20, 200)
    description: str = ""


SUITES = {
    "quick": Suite("quick", episodes=200, shots=(1, 5), classifiers=("proto",), sigma_shots=(1,), per_class=50,
                   probe=False, probe_classes=None, probe_train=None,
                   description="200 episodes, prototypes, σ at 1 shot, no linear probe or kNN"),
    "standard": Suite("standard", episodes=600, shots=(1, 5), classifiers=("proto",), sigma_shots=(1,),
                      per_class=50, probe=True, probe_classes=50, probe_train=10000,
                      description="600 episodes, prototypes, σ at 1 shot, linear probe and kNN on at most 50 "
                                  "classes and 10,000 training images"),
    "full": Suite("full", episodes=2000, shots=(1, 5), classifiers=("proto", "logreg"), sigma_shots=(1, 5),
                  per_class=None, probe=True, probe_classes=None, probe_train=None,
                  description="2,000 episodes, prototypes and logistic regression, σ at 1 and 5 shots, "
                              "linear probe and kNN on every class and image"),
}


@dataclass(frozen=True)
class Target:
    """One (axis, dataset split) the suite measures; ``probe_train`` is the split of labelled
    images of the same classes the linear probe and kNN train on (None: no probe there);
    ``protocol``: few-shot ``episodes`` (with σ and crowding) or Lake's one-shot ``runs``."""

    axis: str
    dataset: str
    split: str
    probe_train: str | None = None
    protocol: str = "episodes"


def plan(dataset, root="", axes=AXES):
    """The targets of a model trained on ``dataset`` and notes on the axes that have none."""
    trained = get_dataset(dataset, root)
    targets, notes = [], []
    if "discriminability" in axes:
        if trained.heldout_split:
            targets.append(Target("discriminability", trained.name, trained.heldout_split, "background"))
        else:
            notes.append(f"no discriminability axis: {trained.name} has no held-out images of its training classes")
    if "generalization" in axes:
        sets = trained.generalization or ((trained.name, trained.eval_split),)
        found = [(name, split) for name, split in sets if get_dataset(name).installed(root)]
        if not found:
            notes.append(f"no generalization axis: none of {', '.join(name for name, _ in sets)} is installed "
                         "(`python -m tasks.data list` says where to put their files)")
        for name, split in found:
            targets.append(Target("generalization", name, split, protocol=get_dataset(name).protocol))
    if "transferability" in axes:
        others = transfer_targets(trained.name, root)
        if not others:
            notes.append("no transferability axis: no dataset of another domain is installed "
                         "(`python -m tasks.data list` shows how to fetch MNIST, Fashion-MNIST or KanjiVG)")
        targets += [transfer_target(name, root) for name in others]
    return targets, notes


def transfer_target(name, root=""):
    """Dataset ``name`` as a transferability target: its evaluation split, with its ``train`` split
    (where it has one) for the linear probe and kNN."""
    data = get_dataset(name, root)
    return Target("transferability", data.name, data.eval_split, "train" if "train" in data.splits else None,
                  data.protocol)


def per_class_rows(labels, cap, seed):
    """Sorted rows keeping at most ``cap`` seeded random images of each class (all when ``cap`` is None)."""
    labels = np.asarray(labels)
    if cap is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero(labels == c))[:cap] for c in np.unique(labels)]
    return np.sort(np.concatenate(rows))


def pick_classes(labels, cap, seed):
    """The classes of ``labels`` (sorted), at most ``cap`` of them drawn with ``seed``."""
    classes = np.unique(np.asarray(labels))
    if cap is None or cap >= len(classes):
        return classes
    return np.sort(np.random.default_rng(seed).choice(classes, size=cap, replace=False))


def probe_rows(labels, classes, cap, seed):
    """Rows of the images of ``classes``, at most ``cap`` of them drawn with ``seed`` (sorted)."""
    rows = np.flatnonzero(np.isin(np.asarray(labels), classes))
    if cap is not None and len(rows) > cap:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=cap, replace=False))
    return rows
