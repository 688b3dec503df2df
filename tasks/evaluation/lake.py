"""Lake et al. (2015)'s one-shot benchmark: 20 runs of 20-way 1-shot classification on Omniglot.

Each run of ``all_runs`` (a zip or folder, found like the other Omniglot files: ``tasks.data.omniglot``)
holds 20 training images (``runNN/training/class01..20.png``), one per character of one evaluation
alphabet, and 20 test images of the same characters by other drawers (``runNN/test/item01..20.png``);
``runNN/class_labels.txt`` pairs every test item with its training image, one
``runNN/test/itemMM.png runNN/training/classKK.png`` line each. A test item is classified by its
nearest training image; the score is the error: the share of the run's 20 items misclassified, as a
percentage, averaged over the runs and given with 1.96 * s / sqrt(runs) over them. Published, on
these runs: people 4.5 %, Bayesian Program Learning 3.3 % (Lake et al. 2015); the repository's pixel
demo (modified Hausdorff distance) 38.8 %.

The registry's ``omniglot-lake`` split ``runs`` lays the runs out as ``(images, labels)``: run by run,
its 20 training images (class01..20) then its 20 test items (item01..20), so row ``40 r + k`` is
training image k and row ``40 r + 20 + m`` test item m of run r; the label of training image k is
``20 r + k`` and a test item has the label of the training image ``class_labels.txt`` pairs it with.

Two classifiers score the runs:

- ``nearest_errors``: nearest neighbour on frozen features by cosine similarity (the suite's 1-shot
  prototype classifier, ``tasks.evaluation.fewshot.prototype_logits``, with one example per class);
- ``hausdorff_errors``: the pixel baseline of Lake's demo: each image is the set of its ink pixel
  coordinates at 105 x 105, centred on their mean, and two images are as far apart as the modified
  Hausdorff distance of their sets (Dubuisson & Jain 1994, ICPR: MHD(A, B) = max(mean over a in A of
  min over b in B of |a - b|, the same from B to A)).
"""
import functools

import numpy as np
import torch
from scipy.spatial import cKDTree

from tasks.common.errors import UserError
from tasks.data.omniglot import WAYS, read_ink, run_files, runs_version
from tasks.evaluation.fewshot import prototype_logits

def _per_run(labels):
    """Labels [runs, 2, WAYS] (training then test of each run), checked against the layout."""
    labels = np.asarray(labels)
    if len(labels) % (2 * WAYS):
        raise ValueError(f"the runs' layout has {2 * WAYS} rows a run, got {len(labels)} rows")
    runs = labels.reshape(-1, 2, WAYS)
    if (runs[:, 0] != WAYS * np.arange(len(runs))[:, None] + np.arange(WAYS)).any():
        raise ValueError("the training rows of the runs are not labelled 20 r + k")
    return runs


def nearest_errors(features, labels):
    """Per-run error (%, float64 [runs]) of the nearest training image by cosine similarity of
    ``features`` [rows, D] laid out as ``read_runs`` lays out the images."""
    runs = _per_run(labels)
    features = torch.as_tensor(features, dtype=torch.float32).reshape(len(runs), 2, WAYS, -1)
    errors = []
    for r in range(len(runs)):
        logits = prototype_logits(features[r, 0], torch.arange(WAYS), features[r, 1], WAYS)
        truth = torch.as_tensor(runs[r, 1] - WAYS * r)
        errors.append(100 * (logits.argmax(1) != truth).double().mean().item())
    return np.array(errors)


def modified_hausdorff(a, b):
    """MHD of two point sets given as ``(points [n, 2], cKDTree of them)``: the larger of the mean
    nearest-neighbour distances from A to B and from B to A."""
    return max(b[1].query(a[0])[0].mean(), a[1].query(b[0])[0].mean())


def ink_points(ink):
    """The ink pixels' coordinates (float [n, 2]) centred on their mean, and their cKDTree."""
    points = np.argwhere(ink).astype(np.float64)
    if not len(points):
        raise UserError("an Omniglot run image holds no ink; the all_runs files are damaged, fetch them again")
    points -= points.mean(0)
    return points, cKDTree(points)


def hausdorff_errors(root):
    """Per-run error (%, float64 [runs]) of the modified-Hausdorff pixel classifier on the runs in
    ``root``, computed once per process and version of the files and cached (its cost: docs/results.md,
    'One-off costs')."""
    return _hausdorff_errors(root, runs_version(root)).copy()


@functools.lru_cache(maxsize=4)
def _hausdorff_errors(root, version):
    tree, layout = run_files(root)
    errors = []
    for training, test, pairs in layout:
        train_sets = [ink_points(read_ink(tree, f)) for f in training]
        test_sets = [ink_points(read_ink(tree, f)) for f in test]
        guesses = [np.argmin([modified_hausdorff(item, t) for t in train_sets]) for item in test_sets]
        errors.append(100 * float(np.mean(np.array(guesses) != pairs)))
    return np.array(errors)
