"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015, Science 350:1332): handwritten characters of 50
alphabets, 20 drawers each, and the paper's 20 one-shot classification runs. MIT licence.

Files, as Lake's repository ships them under ``python/`` (each a zip or the folder unpacked from it):

| file | what |
|---|---|
| ``images_background`` | the full background set: 964 characters of 30 alphabets |
| ``images_evaluation`` | the full evaluation set: 659 characters of 20 other alphabets |
| ``images_background_small1`` | the "minimal" background split 1: 5 alphabets, 136 characters |
| ``images_background_small2`` | the "minimal" background split 2: 5 alphabets, 156 characters |
| ``all_runs`` | the 20 runs of 20-way one-shot classification (``tasks.evaluation.lake``) |

Each of ``ALPHABET/characterNN/CCCC_DD.png`` is one drawing: 105 x 105, black ink on white, ``CCCC``
the character's number in the whole set and ``DD`` its drawer (1-20). Every data folder D is searched
in ``D/omniglot-py`` (torchvision's layout), ``D/omniglot`` and ``D`` itself, so a folder holding
the zips as shipped is a data folder as it is.

Registry data sets (``tasks.data.registry``):

- ``omniglot``: the full background and evaluation sets (when a user has them);
- ``omniglot-small``: the union of both minimal splits, the background data of the Omniglot
  challenge's "minimal" setting. Greek and Latin are in both splits with the same drawings, so a
  character (alphabet and character folder) found in both is counted once: 242 characters of 8
  alphabets, 4,840 images;
- ``omniglot-lake``: the one-shot runs (``tasks.evaluation.lake``).

Images become the convention of ``glyphs``, ``mnist`` and ``kanjivg``: inverted to bright ink on a
black (0) background, area-averaged to ``size`` x ``size`` (PIL's box filter: each output pixel is
the mean of the input area it covers, which is how ``glyphs`` averages its drawing canvas down,
and it keeps thin pen strokes as grey rather than dropping them as point sampling would), then
scaled so the brightest pixel is 255, as each glyph is. Measured at 28 x 28 (ink above 40/255,
every 7th image), a character's ink box spans 0.50-0.89 of the side (5th-95th percentile; median
0.68) on the minimal sets against 0.43-0.75 (median 0.57) on the glyphs' evaluation split, and the
mean pixel is 8 % of full ink against 10 %: Omniglot's characters are drawn a little larger and
thinner than the glyphs, in the same format.
Why this reader and not torchvision's or learn2learn's: see ``tasks.data.formats``.
"""
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tasks.common.errors import UserError
from tasks.data.formats import Tree, fail, is_image

SETS = {"background": "images_background", "evaluation": "images_evaluation",
        "small1": "images_background_small1", "small2": "images_background_small2"}
FULL = ("background", "evaluation")
SMALL = ("small1", "small2")
RUNS = "all_runs"
WAYS = 20  # characters (training images) and test items of each of Lake's one-shot runs
_PAIR = re.compile(r"^(run\d\d)/test/item(\d\d)\.png\s+(run\d\d)/training/class(\d\d)\.png$")


def hint(root, names):
    files = ", ".join(f"{n}.zip" for n in names)
    return (f"put Omniglot's {files} (Lake's repository, python/; MIT licence), or the folders unpacked from "
            f"them, into {Path(root)}/ or {Path(root) / 'omniglot'}/")


def find(root, name):
    """The zip or folder ``name`` of Omniglot in the data folder ``root`` (see the module docstring), or None."""
    for folder in (Path(root) / "omniglot-py", Path(root) / "omniglot", Path(root)):
        for path in (folder / name, folder / f"{name}.zip"):
            if path.exists():
                return path
    return None


def locate(root, names):
    """Where the first of ``names`` lies when all of them are found in ``root``, else None."""
    found = [find(root, n) for n in names]
    return str(found[0].parent) if all(found) else None


def open_tree(root, name, names):
    """The ``Tree`` of the Omniglot file ``name``; a one-line error naming what to put where."""
    path = find(root, name)
    if path is None:
        raise UserError(f"no {name}.zip or {name}/ in {Path(root)} (nor its omniglot/ or omniglot-py/); "
                        f"{hint(root, names)}")
    return Tree(path, hint(root, names))


@dataclass(frozen=True)
class Drawings:
    """Drawings of one or more sets, sorted by character then drawer: per image its ``Tree`` and
    file, its character (``ALPHABET/characterNN``) and its drawer (1-20). ``labels`` number the
    characters 0..C-1 in sorted order; ``alphabets`` gives each image's alphabet."""

    trees: tuple
    files: tuple
    characters: tuple
    drawers: np.ndarray

    @property
    def labels(self):
        return np.unique(np.array(self.characters), return_inverse=True)[1].astype(np.int64).reshape(-1)

    @property
    def alphabets(self):
        return tuple(c.split("/")[0] for c in self.characters)


def drawings(root, sets, names):
    """The ``Drawings`` of ``sets`` (keys of ``SETS``) in ``root``; ``names`` (the files the data set
    needs) go into the error hint. A drawing of the same character and drawer found in several sets
    (Greek and Latin of the minimal splits) counts once."""
    rows = {}
    for key in sets:
        tree = open_tree(root, SETS[key], names)
        images = [n for n in tree.names() if is_image(n)]
        if not images:
            fail(tree.path, "holds no images", tree.hint)
        for name in images:
            parts = name.split("/")
            parts = parts[1:] if parts[0] == SETS[key] else parts  # a zip's top folder
            stem = Path(parts[-1]).stem.split("_")
            if len(parts) != 3 or len(stem) != 2 or not all(s.isdigit() for s in stem):
                fail(tree.where(name), "is not laid out as ALPHABET/CHARACTER/NNNN_DD.png", tree.hint)
            rows.setdefault((f"{parts[0]}/{parts[1]}", int(stem[1])), (tree, name))
    keys = sorted(rows)
    return Drawings(tuple(rows[k][0] for k in keys), tuple(rows[k][1] for k in keys),
                    tuple(k[0] for k in keys), np.array([k[1] for k in keys], np.int64))


def read_ink(tree, name):
    """The ink of one black-on-white Omniglot PNG: bool [H, W], True where the pen drew (dark pixels)."""
    try:
        with Image.open(io.BytesIO(tree.read(name))) as image:
            return np.asarray(image.convert("L")) < 128
    except (UnidentifiedImageError, OSError, ValueError):
        fail(tree.where(name), "is not a readable image (damaged, truncated or not an image)", tree.hint)


def glyph_style(ink, size):
    """A drawing's ink (bool [H, W]) as a uint8 ``size`` x ``size`` image in the glyphs' convention:
    bright ink on 0, area-averaged (PIL's box filter), the brightest pixel scaled to 255."""
    image = Image.fromarray(ink.astype(np.uint8) * 255).resize((size, size), Image.BOX)
    x = np.asarray(image, np.float32)
    return np.round(x * (255 / max(float(x.max()), 1.0))).astype(np.uint8)


def read_drawings(found, size):
    """uint8 [N, size, size] images of ``Drawings`` and their labels."""
    images = np.empty((len(found.files), size, size), np.uint8)
    for i, (tree, name) in enumerate(zip(found.trees, found.files)):
        images[i] = glyph_style(read_ink(tree, name), size)
    return images, found.labels


def _sets(dataset, split):
    return (split,) if dataset == "omniglot" else SMALL


def _names(dataset):
    return [SETS[k] for k in (FULL if dataset == "omniglot" else SMALL)]


def reader(dataset):
    """The registry ``read(split, root, size)`` of ``omniglot`` or ``omniglot-small``."""
    return lambda split, root, size: read_drawings(drawings(root, _sets(dataset, split), _names(dataset)), size)


def counter(dataset):
    """The registry ``count(split, root)``: (images, classes) without decoding."""
    def count(split, root):
        found = drawings(root, _sets(dataset, split), _names(dataset))
        return len(found.files), len(set(found.characters))
    return count


def locator(dataset):
    return lambda root: locate(root, _names(dataset))


def hinter(dataset):
    return lambda root: hint(root, _names(dataset))


def runs_version(root):
    """What identifies the runs' files in ``root`` for a cache: their path, size and modification time."""
    path = find(root, RUNS)
    return (str(path), path.stat().st_size, path.stat().st_mtime_ns) if path else (str(root),)


def run_files(root):
    """The ``Tree`` of ``all_runs`` and, per run in order, (training files [20], test files [20],
    pairs [20]): test file m shows the character of training file ``pairs[m]`` (0-based)."""
    tree = open_tree(root, RUNS, (RUNS,))
    names = set(tree.names())
    top = next((n.split("/")[0] + "/" for n in names if n.startswith(RUNS + "/")), "")
    runs = sorted({n[len(top):].split("/")[0] for n in names if n.startswith(top) and n.endswith("class_labels.txt")})
    if not runs:
        fail(tree.path, "holds no runNN/class_labels.txt", tree.hint)
    layout = []
    for run in runs:
        where = f"{top}{run}/class_labels.txt"
        lines = [line.strip() for line in tree.read(where).decode("utf-8", "replace").splitlines() if line.strip()]
        pairs = [_PAIR.match(line) for line in lines]
        if len(lines) != WAYS or not all(pairs) or any(p[1] != run or p[3] != run for p in pairs):
            fail(tree.where(where), f"is not {WAYS} lines `{run}/test/itemMM.png {run}/training/classKK.png`",
                 tree.hint)
        items, classes = [int(p[2]) for p in pairs], [int(p[4]) for p in pairs]
        if sorted(items) != list(range(1, WAYS + 1)) or sorted(classes) != list(range(1, WAYS + 1)):
            fail(tree.where(where), f"does not pair items 01-{WAYS} one to one with classes 01-{WAYS}", tree.hint)
        order = np.argsort(items)
        training = [f"{top}{run}/training/class{k:02d}.png" for k in range(1, WAYS + 1)]
        test = [f"{top}{run}/test/item{m:02d}.png" for m in range(1, WAYS + 1)]
        missing = [f for f in training + test if f not in names]
        if missing:
            fail(tree.where(missing[0]), "is missing", tree.hint)
        layout.append((training, test, np.array(classes)[order] - 1))
    return tree, tuple(layout)


def read_runs(split, root, size):
    """The registry reader of ``omniglot-lake``: the runs as ``(images, labels)``, laid out as
    ``tasks.evaluation.lake`` says."""
    if split != "runs":
        raise UserError(f"omniglot-lake has one split, runs; got {split!r}")
    tree, layout = run_files(root)
    images, labels = [], []
    for r, (training, test, pairs) in enumerate(layout):
        images += [glyph_style(read_ink(tree, f), size) for f in training + test]
        labels += [WAYS * r + k for k in range(WAYS)] + [WAYS * r + int(k) for k in pairs]
    return np.stack(images), np.array(labels, np.int64)


def count_runs(split, root):
    _, layout = run_files(root)
    return 2 * WAYS * len(layout), WAYS * len(layout)
