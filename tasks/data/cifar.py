"""CIFAR-10, CIFAR-100 and the few-shot sets built from CIFAR-100 (CIFAR-FS, FC100): 32 x 32 colour.

Read from the "python version" archives of https://www.cs.toronto.edu/~kriz/cifar.html, unpacked
(``ROOT/cifar-10-batches-py/``, ``ROOT/cifar-100-python/``) or not (``ROOT/cifar-10-python.tar.gz``,
``ROOT/cifar-100-python.tar.gz``): pickles of dicts with ``data`` (uint8 [N, 3072], the red, green
and blue planes of each 32 x 32 image) and ``labels`` (CIFAR-10) or ``fine_labels`` and
``coarse_labels`` (CIFAR-100); ``batches.meta`` / ``meta`` name the classes.

- ``cifar10``: ``train`` (data_batch_1..5, 50,000) and ``test`` (test_batch, 10,000).
- ``cifar100``: ``train`` (50,000) and ``test`` (10,000), the 100 fine classes.
- ``cifar-fs`` (Bertinetto et al., "Meta-learning with differentiable closed-form solvers",
  ICLR 2019; class lists of their repository's ``splits/bertinetto/{val,test}.txt``): all 600
  images of each CIFAR-100 class (train and test files together); 64 background, 16 validation
  and 20 evaluation classes, ``CIFAR_FS_VALIDATION`` and ``CIFAR_FS_EVALUATION`` below, the
  background classes being the other 64.
- ``fc100`` (Oreshkin et al., "TADAM", NeurIPS 2018, supplementary material): split by
  superclass (coarse label) so the splits share no superclass: background superclasses
  1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19 (60 classes), validation 8, 11, 13, 16 (20), evaluation
  0, 7, 12, 14 (20).
Classes are numbered within a split in the order of their CIFAR label.
Why this reader and not torchvision's or learn2learn's: see ``tasks.data.formats``.
"""
from pathlib import Path

import numpy as np

from tasks.common.errors import UserError
from tasks.data.formats import Tree, fail, read_pickle, resize, take_classes, text_keys

CIFAR10 = ("cifar-10-batches-py", "cifar-10-python.tar.gz")
CIFAR100 = ("cifar-100-python", "cifar-100-python.tar.gz")
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR100_FILES = {"train": ["train"], "test": ["test"]}
CIFAR_FS_VALIDATION = ("otter", "motorcycle", "television", "lamp", "crocodile", "shark", "butterfly",
                       "beaver", "beetle", "tractor", "flatfish", "maple_tree", "camel", "crab", "sea",
                       "cattle")
CIFAR_FS_EVALUATION = ("baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck",
                       "plain", "poppy", "rocket", "rose", "snail", "sweet_pepper", "table", "telephone",
                       "wardrobe", "whale", "woman", "worm")
FC100_SUPERCLASSES = {"background": (1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19),
                      "validation": (8, 11, 13, 16), "evaluation": (0, 7, 12, 14)}
FEWSHOT_SPLITS = ("background", "validation", "evaluation")


def hint(root, layout):
    folder, archive = layout
    return (f"download the CIFAR python version from https://www.cs.toronto.edu/~kriz/cifar.html and put "
            f"{archive} (or the folder {folder}/ unpacked from it) into {Path(root)}/")


def locate(root, layout):
    for name in layout:
        if (Path(root) / name).exists():
            return str(Path(root) / name)
    return None


def read_cifar10(split, root, image_size):
    images, labels = _read(root, CIFAR10, CIFAR10_FILES[split], "labels")[:2]
    return resize(images, image_size), labels


def read_cifar100(split, root, image_size):
    images, labels = _read(root, CIFAR100, CIFAR100_FILES[split], "fine_labels")[:2]
    return resize(images, image_size), labels


def read_cifar_fs(split, root, image_size):
    images, labels, _, names = _read_all_cifar100(root)
    wanted = {"validation": CIFAR_FS_VALIDATION, "evaluation": CIFAR_FS_EVALUATION}.get(split)
    missing = sorted(set(CIFAR_FS_VALIDATION + CIFAR_FS_EVALUATION) - set(names))
    if missing:
        fail(locate(root, CIFAR100), f"names no class {', '.join(missing)} in its meta file, so it is not "
                                     "CIFAR-100", hint(root, CIFAR100))
    held_out = set(CIFAR_FS_VALIDATION + CIFAR_FS_EVALUATION)
    chosen = [i for i, name in enumerate(names) if (name in wanted if wanted else name not in held_out)]
    images, labels = take_classes(images, labels, chosen)
    return resize(images, image_size), labels


def read_fc100(split, root, image_size):
    images, labels, coarse, _ = _read_all_cifar100(root)
    chosen = np.unique(labels[np.isin(coarse, FC100_SUPERCLASSES[split])])
    images, labels = take_classes(images, labels, chosen)
    return resize(images, image_size), labels


def _read_all_cifar100(root):
    """Train and test files together: images, fine labels, coarse labels, fine class names."""
    return _read(root, CIFAR100, ["train", "test"], "fine_labels", "coarse_labels")


def _read(root, layout, files, label_key, extra_key=None):
    """Images [N, 3, 32, 32], labels, the ``extra_key`` labels and the class names of ``layout``."""
    where, the_hint = locate(root, layout), hint(root, layout)
    if where is None:
        raise UserError(f"no {layout[0]}/ or {layout[1]} in {Path(root)}; {the_hint}")
    tree = Tree(where, the_hint)
    prefix = "" if Path(where).is_dir() else layout[0] + "/"
    meta_file = "batches.meta" if layout == CIFAR10 else "meta"
    names, parts = None, []
    for name in [meta_file, *files]:
        if prefix + name not in tree.names():
            fail(where, f"has no file {prefix + name}, so it is not the {layout[1]} archive or its folder",
                 the_hint)
        d = read_pickle(tree.where(prefix + name), the_hint, data=tree.read(prefix + name))
        d = text_keys(d) if isinstance(d, dict) else d
        if not isinstance(d, dict):
            fail(tree.where(prefix + name), "does not hold a CIFAR dict", the_hint)
        if name == meta_file:
            names = [n.decode() if isinstance(n, bytes) else n
                     for n in d.get("label_names" if layout == CIFAR10 else "fine_label_names", [])]
            continue
        parts.append(_check(d, tree.where(prefix + name), label_key, extra_key, len(names), the_hint))
    images = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts])
    extra = np.concatenate([p[2] for p in parts]) if extra_key else None
    return images, labels, extra, names


def _check(d, where, label_key, extra_key, classes, the_hint):
    keys = ["data", label_key] + ([extra_key] if extra_key else [])
    if any(k not in d for k in keys):
        fail(where, f"lacks the key(s) {', '.join(k for k in keys if k not in d)} of a CIFAR batch", the_hint)
    data = np.asarray(d["data"])
    labels = [np.asarray(d[k]).astype(np.int64).reshape(-1) for k in keys[1:]]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels[0]) != len(data):
        fail(where, f"holds data {data.dtype} {data.shape} for {len(labels[0])} labels, not uint8 [N, 3072]",
             the_hint)
    if classes == 0 or labels[0].min(initial=0) < 0 or labels[0].max(initial=0) >= classes:
        fail(where, f"has labels outside the {classes} classes its meta file names", the_hint)
    return data, labels[0], labels[1] if extra_key else None
