"""Glyphs: an Omniglot-like few-shot dataset rendered offline from fonts.

Writers are font designs. The default set draws with 40 fonts pinned by SHA-256 in
``tasks/data/glyph_fonts.json``: matplotlib 3.11.2's DejaVu and STIX fonts and Debian's
``fonts-dejavu-core`` and ``fonts-dejavu-extra`` 2.37-6. They are found by content
(``tasks.data.fonts``: the project's font folder, matplotlib's, the system's), so no other font installed
on the machine changes the set, and a pinned file that is missing or differs is an error that says
to run ``python -m tasks.data.fonts install`` (``make install`` runs it). ``font_dirs`` adds more fonts
after them (``glyphs-noto``: Debian's ``fonts-noto-core``, about 30 scripts more). A design found
twice (same full font name) counts once.

A class is a (script, character) pair:

- characters are letters (Lu, Ll, Lt, Lo), numbers (N*) and symbols (Sm, So, Sc) that have no Unicode
  decomposition, so accented, compatibility and presentation forms (``é``, ``𝐀``, ``ﻫ``) are left out;
  combining marks, modifiers, punctuation, whitespace and controls are never classes;
- script = the character's Unicode script (``Latin``, ``Greek``, ``Canadian Aboriginal``, ...); for
  script-neutral characters (digits, maths, currency) it is the Unicode block, and only the blocks
  in ``_SYMBOL_BLOCKS`` are kept; Braille is left out (its patterns differ only by dot position);
- a font writes a character when its cmap (fontTools) maps it and the rendering has ink and differs
  from the font's ``.notdef`` box; an ink pattern that one font draws for more than
  ``_PLACEHOLDER_SHARE`` characters is a placeholder and counts for none of them;
- characters that some font draws with the same ink up to translation (``A``, Greek ``Α``, Cyrillic
  ``А``) are one class, named by the lowest code point, so no class reappears under another script;
- a class needs ``min_writers`` fonts (default 2) and a script needs ``_MIN_SCRIPT_CLASSES`` classes.

Each sample is one writer's rendering (the writers of a class taken in a seeded random order, cycled)
with handwriting-like jitter: stroke width (dilation or erosion), an affine map (rotation, shear,
anisotropic scale, translation) and a smooth elastic displacement field (Gaussian noise on a 5 x 5
grid, upsampled bicubically). Glyphs are drawn at ``size * ceil(64 / size)`` pixels, centred on their
ink box with its longer side in [0.35, 0.7] of the canvas, and averaged down to ``size`` x ``size``.
Images are uint8 with white ink on a black background (0 = background), each scaled so its
brightest pixel is 255.

Split by script as Omniglot does: the scripts are shuffled with the seed and the background split
(pre-training) takes the first k of them, k chosen so its share of the classes is closest to 65 %;
the other scripts form the evaluation split, never seen in pre-training.

Everything is a pure function of ``seed`` and the font files: each class draws from its own numpy
Generator seeded by (seed, code point), so results do not depend on the number of worker processes.
``draw_seed`` (default: ``seed``) seeds the drawings alone: another value gives new drawings of the
same classes with the same split, the held-out images of the background classes that the
evaluation suite's discriminability axis needs.
The result is cached as ``glyphs-v{version}-s{size}-n{samples}-seed{seed}-{hash}.npz`` (with
``-draw{draw_seed}`` before the hash when it differs from ``seed``; the hash
covers the font files and ``min_writers``) under ``root``, else ``$GESSL_DATA``, else
``$XDG_CACHE_HOME/gessl``, else ``~/.cache/gessl``.

CLI: ``python -m tasks.data.glyphs preview --out grid.png`` draws a sample grid; ``python -m tasks.data.glyphs
info`` prints the classes and scripts per split, the cache file and the generation time.
"""
import argparse
import functools
import hashlib
import math
import multiprocessing
import os
import signal
import sys
import time
import unicodedata
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fontTools import unicodedata as ucd
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps, ImageStat
from tqdm import tqdm

from tasks.common.errors import UserError
from tasks.common.io import atomic_path, read_npz, write_npz
from tasks.data.fonts import font_files, matplotlib_fonts
from tasks.data.roots import data_root

VERSION = 1

_CATEGORIES = {"Lu", "Ll", "Lt", "Lo", "Nd", "Nl", "No", "Sm", "So", "Sc"}
_SYMBOL_BLOCKS = {
    "Basic Latin", "Latin-1 Supplement", "Currency Symbols", "Letterlike Symbols",
    "Mathematical Operators",
}
_SKIPPED_SCRIPTS = {"Brai"}
_NEUTRAL_SCRIPTS = {"Zyyy", "Zinh", "Zzzz"}
_CHECK_EM = 32            # pixels per em when testing which characters a font really draws
_MIN_INK = 4.0            # a glyph needs at least this many pixels' worth of ink at _CHECK_EM
_PLACEHOLDER_SHARE = 8    # more characters than this with one ink pattern: a placeholder glyph
_MIN_SCRIPT_CLASSES = 5
_BACKGROUND_SHARE = 0.65
_DRAW_PX = 64             # glyphs are drawn on a canvas of at least this many pixels
_EM = 0.72                # font size as a fraction of the canvas
_ELASTIC = 0.05           # elastic field: std of its cosine modes, in units of half the canvas
_MODES = 4                # ... the lowest 4 x 4 cosine modes per axis
_MODE_DECAY = 1.0 + np.add.outer(np.arange(_MODES), np.arange(_MODES))  # higher modes weaker
_INK_BOX = (0.35, 0.7)    # the longer side of a glyph's ink box, as a fraction of the canvas
_KEYS = ("images", "labels", "scripts", "chars", "background", "evaluation", "seconds", "version")


@dataclass
class GlyphSet:
    """Images with global class labels, the (script, character) of each class and the splits."""

    images: np.ndarray                 # uint8 [N, size, size], 0 = background, white ink
    labels: np.ndarray                 # int64 [N], class index 0..C-1 (global over both splits)
    classes: list[tuple[str, str]]     # (script, character) per class index
    splits: dict[str, np.ndarray]      # {'background': class indices, 'evaluation': class indices}
    path: Path | None = None           # the cache file it was read from or written to
    seconds: float = 0.0               # how long generating it took

    def subset(self, split):
        """Images and labels of one split, with its classes renumbered 0..k-1 in index order."""
        if split not in self.splits:
            raise UserError(f"unknown glyph split {split!r}; use one of {sorted(self.splits)}")
        classes = np.sort(self.splits[split])
        keep = np.isin(self.labels, classes)
        return self.images[keep], np.searchsorted(classes, self.labels[keep]).astype(np.int64)


def load_glyphs(root=None, size=28, samples_per_class=20, seed=0, progress=True, min_writers=2,
                font_dirs=(), draw_seed=None, _fonts=None):
    """Read the glyph set from the cache under ``root``, generating and caching it if missing.

    ``font_dirs``: more folders of fonts to use after the pinned default ones (``glyphs-noto`` adds
    the Noto fonts ``python -m tasks.data fetch noto`` unpacked into the data folder).
    ``_fonts`` (a list of font files) replaces all fonts; tests use it to stay small.
    """
    for name, value, low in (("size", size, 8), ("samples_per_class", samples_per_class, 1),
                             ("seed", seed, 0), ("min_writers", min_writers, 1),
                             ("draw_seed", seed if draw_seed is None else draw_seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise UserError(f"glyphs {name} must be an integer >= {low}, got {value!r}")
    fonts = font_files(font_dirs) if _fonts is None else [str(f) for f in _fonts]
    if not fonts:
        raise UserError("no font files found for glyphs; install matplotlib or fonts-noto-core")
    draw_seed = seed if draw_seed is None else draw_seed
    path = cache_path(root, size, samples_per_class, seed, min_writers, fonts, draw_seed)
    if path.exists():
        try:
            return _read(path, size)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            warnings.warn(f"glyph cache {path} is unreadable ({e}); generating it again")
    glyphs = _generate(fonts, size, samples_per_class, seed, min_writers, progress, draw_seed)
    glyphs.path = path
    _write(glyphs, path)
    return glyphs


def cache_path(root=None, size=28, samples_per_class=20, seed=0, min_writers=2, fonts=None, draw_seed=None):
    """The cache file of a glyph set drawn with ``fonts`` (default: the pinned default fonts)."""
    fonts = font_files() if fonts is None else fonts
    digest = hashlib.blake2b(repr((min_writers, [(Path(f).name, os.path.getsize(f)) for f in fonts]))
                             .encode(), digest_size=4).hexdigest()
    draw = "" if draw_seed in (None, seed) else f"-draw{draw_seed}"
    return data_root(root) / f"glyphs-v{VERSION}-s{size}-n{samples_per_class}-seed{seed}{draw}-{digest}.npz"


def preview(glyphs, out_path, n_classes=20, n_per_class=10, seed=0):
    """Write a PNG grid: one row per randomly chosen class (labelled with its script), samples across."""
    rng = np.random.default_rng(seed)
    n_classes = min(n_classes, len(glyphs.classes))
    chosen = np.sort(rng.choice(len(glyphs.classes), n_classes, replace=False))
    size = glyphs.images.shape[1]
    cell = size * max(1, 56 // size)
    label_font = ImageFont.truetype(matplotlib_fonts()[0], 13)
    label_w = 290
    sheet = Image.new("L", (label_w + n_per_class * (cell + 2), n_classes * (cell + 2)), 40)
    draw = ImageDraw.Draw(sheet)
    for row, c in enumerate(chosen):
        script, ch = glyphs.classes[c]
        y = row * (cell + 2)
        draw.text((6, y + cell // 2 - 7), f"{script}  U+{ord(ch):04X}", font=label_font, fill=255)
        for col, i in enumerate(np.flatnonzero(glyphs.labels == c)[:n_per_class]):
            tile = Image.fromarray(glyphs.images[i]).resize((cell, cell), Image.NEAREST)
            sheet.paste(tile, (label_w + col * (cell + 2), y))
    with atomic_path(out_path) as tmp:
        sheet.save(tmp, format="PNG")


def _script_of(ch):
    """The script a character's class belongs to, or None when the character is not a class."""
    if unicodedata.category(ch) not in _CATEGORIES or unicodedata.decomposition(ch):
        return None
    code = ucd.script(ch)
    if code in _NEUTRAL_SCRIPTS:
        block = ucd.block(ch)
        return block if block in _SYMBOL_BLOCKS else None
    return None if code in _SKIPPED_SCRIPTS else ucd.script_name(code)


def _ink(font, ch):
    """The glyph's coverage as an "L" image cropped to its ink box, or None when it has no ink."""
    left, top, right, bottom = font.getbbox(ch)
    if right <= left or bottom <= top:
        return None
    image = Image.new("L", (right - left, bottom - top))
    ImageDraw.Draw(image).text((-left, -top), ch, font=font, fill=255)
    box = image.getbbox()
    if box is None or np.asarray(image).sum() < _MIN_INK * 255:
        return None
    return image.crop(box)


def _ink_key(ink):
    return hashlib.blake2b(repr(ink.size).encode() + ink.tobytes(), digest_size=8).hexdigest()


def _scan_font(path):
    """(full font name, {code point: ink key}) for the candidate characters a font really draws."""
    try:
        tt = TTFont(path, lazy=True, fontNumber=0)
        name, cmap = tt["name"].getDebugName(4) or Path(path).stem, tt.getBestCmap() or {}
        font = ImageFont.truetype(path, _CHECK_EM, layout_engine=ImageFont.Layout.BASIC)
    except Exception as e:  # a broken font file must not stop the others
        return path, None, f"{type(e).__name__}: {e}"
    notdef = _ink(font, "\U0010FFFD")  # a private-use code point no font maps: draws .notdef
    notdef = None if notdef is None else _ink_key(notdef)
    keys = {}
    for cp, glyph in cmap.items():
        if glyph == ".notdef" or _script_of(chr(cp)) is None:
            continue
        ink = _ink(font, chr(cp))
        if ink is not None and (key := _ink_key(ink)) != notdef:
            keys[cp] = key
    shared = {}
    for key in keys.values():
        shared[key] = shared.get(key, 0) + 1
    return name, {cp: k for cp, k in keys.items() if shared[k] <= _PLACEHOLDER_SHARE}, None


def _select_classes(fonts, scans, min_writers):
    """[(script, character, [font files])] sorted by script then code point."""
    parent = {}

    def find(cp):
        while parent.setdefault(cp, cp) != cp:
            cp = parent[cp]
        return cp

    writers, names = {}, set()
    for path, (name, keys) in zip(fonts, scans):
        if keys is None or name in names:
            continue
        names.add(name)
        first = {}
        for cp, key in sorted(keys.items()):
            writers.setdefault(cp, []).append(path)
            a, b = find(first.setdefault(key, cp)), find(cp)
            parent[max(a, b)] = min(a, b)
    chosen = [(_script_of(chr(cp)), chr(cp), paths) for cp, paths in writers.items()
              if find(cp) == cp and len(paths) >= min_writers]
    per_script = {}
    for script, _, _ in chosen:
        per_script[script] = per_script.get(script, 0) + 1
    return sorted((c for c in chosen if per_script[c[0]] >= _MIN_SCRIPT_CLASSES),
                  key=lambda c: (c[0], ord(c[1])))


def _split(scripts, seed):
    """{'background', 'evaluation'} class indices: scripts in a seeded random order join the
    background while it stays within 65 % of the classes; the rest are the evaluation scripts."""
    names, counts = np.unique(np.asarray(scripts), return_counts=True)
    if len(names) < 2:
        raise UserError(f"glyphs found only the script(s) {list(names)}, so there is nothing to split; "
                        "install more fonts (e.g. the Debian package fonts-noto-core)")
    background, total = set(), 0
    for i in np.random.default_rng(seed).permutation(len(names)):
        if total + counts[i] <= _BACKGROUND_SHARE * counts.sum():
            background.add(names[i])
            total += counts[i]
    is_background = np.array([s in background for s in scripts])
    return {"background": np.flatnonzero(is_background), "evaluation": np.flatnonzero(~is_background)}


@functools.lru_cache(maxsize=64)
def _font(path, em):
    return ImageFont.truetype(path, em, layout_engine=ImageFont.Layout.BASIC)


def _placed(ink, stroke, side):
    """A side x side "L" canvas with the ink, its strokes widened (stroke > 0) or thinned
    (stroke < 0, unless that would take half the ink away), scaled into _INK_BOX and centred."""
    if stroke:
        changed = ImageOps.expand(ink, abs(stroke))
        for _ in range(abs(stroke)):
            changed = changed.filter(ImageFilter.MaxFilter(3) if stroke > 0 else ImageFilter.MinFilter(3))
        box = changed.getbbox()
        if box and (stroke > 0 or _total(changed) >= 0.5 * _total(ink)):
            ink = changed.crop(box)
    long_side = max(ink.size)
    target = float(np.clip(long_side, _INK_BOX[0] * side, _INK_BOX[1] * side))
    if target != long_side:
        ink = ink.resize(tuple(max(1, round(n * target / long_side)) for n in ink.size), Image.LANCZOS)
    canvas = Image.new("L", (side, side))
    canvas.paste(ink, ((side - ink.size[0]) // 2, (side - ink.size[1]) // 2))
    return canvas


def _total(image):
    return ImageStat.Stat(image).sum[0]


def _draw_class(job):
    """``samples`` jittered drawings (uint8 [samples, size, size]) of one class, seeded by its
    code point: a writer, a stroke width change, an affine map and an elastic field each."""
    ch, paths, size, samples, seed = job
    rng = np.random.default_rng([seed, ord(ch)])
    side = size * math.ceil(_DRAW_PX / size)
    writer = rng.permutation(len(paths))[np.arange(samples) % len(paths)]
    stroke = rng.choice([-1, 0, 1, 2], size=samples, p=[0.25, 0.35, 0.25, 0.15])
    angle = np.deg2rad(rng.uniform(-10, 10, samples))
    shear = rng.uniform(-0.2, 0.2, samples)
    scale = np.exp(rng.uniform(-0.12, 0.12, (samples, 2)))
    shift = rng.uniform(-0.06, 0.06, (samples, 2))
    modes = rng.normal(0.0, _ELASTIC, (samples, 2, _MODES, _MODES)) / _MODE_DECAY

    inks = {w: _ink(_font(paths[w], round(_EM * side)), ch) for w in np.unique(writer)}
    x = np.stack([np.asarray(_placed(inks[w], s, side)) for w, s in zip(writer, stroke)])
    # Drawing maps a glyph point q to M q + shift, M = rotation @ shear @ scale; grid_sample needs
    # the inverse, the glyph point M^-1 (p - shift) for each output point p, plus the elastic field.
    cos, sin, one, zero = np.cos(angle), np.sin(angle), np.ones(samples), np.zeros(samples)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], 1)
    shearing = np.stack([np.stack([one, shear], -1), np.stack([zero, one], -1)], 1)
    inverse = np.linalg.inv(rotation @ shearing @ (scale[:, :, None] * np.eye(2)))
    inverse = inverse.astype(np.float32)[:, :, :, None, None]                    # [n, 2, 2, 1, 1]
    pixel = ((np.arange(side) + 0.5) / side * 2 - 1).astype(np.float32)
    px = pixel[None, None, :] - shift[:, 0, None, None].astype(np.float32)      # [n, 1, side]
    py = pixel[None, :, None] - shift[:, 1, None, None].astype(np.float32)      # [n, side, 1]
    basis = np.cos(np.pi * np.outer((pixel + 1) / 2, np.arange(_MODES))).astype(np.float32)
    elastic = basis @ modes.astype(np.float32) @ basis.T                         # [n, 2, side, side]
    grid = np.stack([inverse[:, 0, 0] * px + inverse[:, 0, 1] * py + elastic[:, 0],
                     inverse[:, 1, 0] * px + inverse[:, 1, 1] * py + elastic[:, 1]], -1)
    x = F.grid_sample(torch.from_numpy(x)[:, None].float() / 255, torch.from_numpy(grid),
                      align_corners=False)
    x = F.avg_pool2d(x, side // size)[:, 0]
    x = x / x.amax((1, 2), keepdim=True).clamp_min(1e-6)
    return (x * 255).round().to(torch.uint8).numpy()


def _worker_init():
    """One thread per worker; Ctrl-C is the parent's to handle (a worker ignores it) and SIGTERM, with
    which the pool ends its workers, ends a worker at once, whatever handlers the parent set."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _map(fn, jobs, progress, desc):
    """``[fn(job) for job in jobs]`` on forked worker processes when this platform can fork."""
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
                  os.cpu_count() or 1, 8, len(jobs))
    bar = dict(total=len(jobs), desc=desc, disable=not progress, leave=False)
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [fn(job) for job in tqdm(jobs, **bar)]
    with multiprocessing.get_context("fork").Pool(workers, initializer=_worker_init) as pool:
        return list(tqdm(pool.imap(fn, jobs, chunksize=4), **bar))


def _generate(fonts, size, samples, seed, min_writers, progress, draw_seed):
    start = time.perf_counter()
    scans = []
    for path, (name, keys, error) in zip(fonts, _map(_scan_font, fonts, progress, "glyphs: fonts")):
        if error:
            warnings.warn(f"glyphs skips the unreadable font {path} ({error})")
        scans.append((name, keys))
    classes = _select_classes(fonts, scans, min_writers)
    if not classes:
        raise UserError("no font draws any glyph class; install matplotlib's fonts or fonts-noto-core")
    splits = _split([script for script, _, _ in classes], seed)
    jobs = [(ch, paths, size, samples, draw_seed) for _, ch, paths in classes]
    images = np.concatenate(_map(_draw_class, jobs, progress, "glyphs: drawing"))
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), samples)
    return GlyphSet(images, labels, [(script, ch) for script, ch, _ in classes], splits,
                    seconds=time.perf_counter() - start)


def _write(glyphs, path):
    scripts, chars = zip(*glyphs.classes)
    write_npz(path, {"images": glyphs.images, "labels": glyphs.labels, "scripts": np.array(scripts),
                     "chars": np.array(chars), "background": glyphs.splits["background"],
                     "evaluation": glyphs.splits["evaluation"], "seconds": np.float64(glyphs.seconds),
                     "version": np.int64(VERSION)}, compressed=True)


def _read(path, size):
    """The cached GlyphSet; ValueError, KeyError or a zip/zlib error when the file is damaged."""
    d = read_npz(path, _KEYS)
    images, labels, n = d["images"], d["labels"], len(d["chars"])
    splits = {k: d[k].astype(np.int64) for k in ("background", "evaluation")}
    if (int(d["version"]) != VERSION or images.dtype != np.uint8 or images.shape[1:] != (size, size)
            or labels.shape != images.shape[:1] or len(d["scripts"]) != n
            or sorted(np.concatenate(list(splits.values())).tolist()) != list(range(n))
            or labels.size == 0 or labels.min() < 0 or labels.max() >= n):
        raise ValueError("its arrays do not fit together")
    return GlyphSet(images, labels.astype(np.int64), list(zip(d["scripts"].tolist(), d["chars"].tolist())),
                    splits, path=Path(path), seconds=float(d["seconds"]))


def _describe(glyphs):
    """Lines for ``info``: totals, then the classes and scripts of each split."""
    size = glyphs.images.shape[1]
    mb = glyphs.path.stat().st_size / 1e6 if glyphs.path and glyphs.path.exists() else float("nan")
    lines = [f"glyphs: {len(glyphs.classes)} classes, {len(glyphs.images)} images of {size}x{size}",
             f"cache: {glyphs.path} ({mb:.1f} MB), generated in {glyphs.seconds:.1f} s"]
    for split, classes in glyphs.splits.items():
        counts = {}
        for c in classes:
            counts[glyphs.classes[c][0]] = counts.get(glyphs.classes[c][0], 0) + 1
        lines.append(f"{split}: {len(classes)} classes in {len(counts)} scripts: "
                     + ", ".join(f"{s} ({n})" for s, n in sorted(counts.items())))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tasks.data.glyphs",
                                     description="The embedded Omniglot-like glyph data set.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("preview", "write a PNG grid of samples"),
                       ("info", "print the classes and scripts of each split and the cache file")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--size", type=int, default=28, help="image side in pixels (default 28)")
        sub.add_argument("--samples", type=int, default=20, help="samples per class (default 20)")
        sub.add_argument("--seed", type=int, default=0, help="generation and split seed (default 0)")
        sub.add_argument("--data-root", default="", help="data folder(s), several separated by ':'; the glyphs are "
                         "cached in the first (default: $GESSL_DATA or ~/.cache/gessl)")
        if name == "preview":
            sub.add_argument("--out", required=True, help="PNG file to write")
            sub.add_argument("--classes", type=int, default=20, help="rows: random classes (default 20)")
            sub.add_argument("--per-class", type=int, default=10, help="columns (default 10)")
    args = parser.parse_args(argv)
    try:
        glyphs = load_glyphs(args.data_root, args.size, args.samples, args.seed)
        if args.command == "preview":
            if args.classes < 1 or args.per_class < 1:
                raise UserError("--classes and --per-class must be at least 1")
            preview(glyphs, args.out, n_classes=args.classes, n_per_class=args.per_class, seed=args.seed)
            print(f"wrote {args.out}")
        else:
            print("\n".join(_describe(glyphs)))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
