"""Sets cut from ImageNet: miniImageNet, tieredImageNet (few-shot) and STL-10 (classification).

- ``mini-imagenet`` (Vinyals et al. 2016, the Ravi & Larochelle 2017 class split): learn2learn's
  pickles ``mini-imagenet-cache-{train,validation,test}.pkl`` in ``ROOT/`` (learn2learn's root) or
  ``ROOT/mini-imagenet/``: a dict with ``image_data`` (uint8 [N, 84, 84, 3]) and ``class_dict``
  ({wordnet id: [image indices]}); 64 / 16 / 20 classes of 600 images. Classes are numbered in
  the sorted order of their ids.
- ``tiered-imagenet`` (Ren et al., ICLR 2018): as learn2learn stores it, ``ROOT/tiered-imagenet/``
  with ``{train,val,test}_images_png.pkl`` (a list of PNG-encoded 84 x 84 images) and
  ``{train,val,test}_labels.pkl`` (a dict whose ``label_specific`` holds the class of each image);
  351 / 97 / 160 classes. The test split alone is 206,209 images (4.4 GB at 84 x 84 once decoded).
- ``stl10`` (Coates et al. 2011): the binary version, ``ROOT/stl10_binary/`` with
  ``{train,test}_X.bin`` (uint8, 3 x 96 x 96 per image, each plane stored column by column) and
  ``{train,test}_y.bin`` (uint8 labels 1..10); 5,000 train and 8,000 test images. The unlabelled
  images are not read.
Few-shot splits map train / validation / test to ``background`` / ``validation`` / ``evaluation``.
Why this reader and not torchvision's or learn2learn's: see ``tasks.data.formats``.
"""
from pathlib import Path

import numpy as np

from tasks.common.errors import UserError
from tasks.data.formats import decode_image, fail, read_bytes, read_pickle, renumber, require, resize

MINI_FILES = {"background": "train", "validation": "validation", "evaluation": "test"}
TIERED_FILES = {"background": "train", "validation": "val", "evaluation": "test"}
STL_SIDE = 96


def mini_hint(root):
    return (f"put learn2learn's miniImageNet pickles mini-imagenet-cache-train.pkl, "
            f"mini-imagenet-cache-validation.pkl and mini-imagenet-cache-test.pkl into {Path(root)}/")


def _mini_file(split, root):
    name = f"mini-imagenet-cache-{MINI_FILES[split]}.pkl"
    for folder in (Path(root), Path(root) / "mini-imagenet"):
        if (folder / name).is_file():
            return folder / name
    return Path(root) / name


def locate_mini(root):
    files = [_mini_file(split, root) for split in MINI_FILES]
    return str(files[0].parent) if all(f.is_file() for f in files) else None


def read_mini(split, root, image_size):
    path, the_hint = _mini_file(split, root), mini_hint(root)
    data = read_pickle(require(path, "miniImageNet pickle", the_hint), the_hint)
    if not isinstance(data, dict) or not {"image_data", "class_dict"} <= set(data):
        fail(path, "is not a miniImageNet cache pickle (expected a dict with image_data and class_dict)",
             the_hint)
    images, class_dict = np.asarray(data["image_data"]), data["class_dict"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or not isinstance(class_dict, dict):
        fail(path, f"holds image_data {images.dtype} {images.shape}, not uint8 [N, H, W, 3]", the_hint)
    labels = np.full(len(images), -1, np.int64)
    for label, name in enumerate(sorted(class_dict)):
        index = np.asarray(class_dict[name], np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(images)):
            fail(path, f"lists images of class {name} beyond its {len(images)} images", the_hint)
        labels[index] = label
    keep = labels >= 0
    return resize(images[keep].transpose(0, 3, 1, 2), image_size), labels[keep]


def tiered_dir(root):
    return Path(root) / "tiered-imagenet"


def tiered_hint(root):
    return (f"put learn2learn's tieredImageNet files (train_images_png.pkl, train_labels.pkl, "
            f"val_images_png.pkl, val_labels.pkl, test_images_png.pkl, test_labels.pkl) into {tiered_dir(root)}/")


def locate_tiered(root):
    names = [f"{s}_{kind}.pkl" for s in TIERED_FILES.values() for kind in ("images_png", "labels")]
    return str(tiered_dir(root)) if all((tiered_dir(root) / n).is_file() for n in names) else None


def tiered_labels(split, root):
    """The class of each image of a tieredImageNet split, renumbered 0..C-1."""
    the_hint = tiered_hint(root)
    path = require(tiered_dir(root) / f"{TIERED_FILES[split]}_labels.pkl", "tieredImageNet labels", the_hint)
    data = read_pickle(path, the_hint)
    if not isinstance(data, dict) or "label_specific" not in data:
        fail(path, "is not a tieredImageNet labels pickle (expected a dict with label_specific)", the_hint)
    labels = np.asarray(data["label_specific"]).reshape(-1)
    if labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        fail(path, "holds no integer labels in label_specific", the_hint)
    return renumber(labels)


def read_tiered(split, root, image_size):
    the_hint = tiered_hint(root)
    labels = tiered_labels(split, root)
    path = require(tiered_dir(root) / f"{TIERED_FILES[split]}_images_png.pkl", "tieredImageNet images", the_hint)
    encoded = read_pickle(path, the_hint)
    if not hasattr(encoded, "__len__") or len(encoded) != len(labels):
        fail(path, f"does not hold one encoded image per label ({len(labels)} labels)", the_hint)
    images = np.empty((len(labels), 3, image_size, image_size), np.uint8)
    for i, data in enumerate(encoded):
        data = data if isinstance(data, bytes) else np.asarray(data, np.uint8).tobytes()
        images[i] = decode_image(data, image_size, "RGB", f"{path} [image {i}]", the_hint)
    return images, labels


def stl_dir(root):
    return Path(root) / "stl10_binary"


def stl_hint(root):
    return (f"download stl10_binary.tar.gz (https://cs.stanford.edu/~acoates/stl10/) and unpack it into "
            f"{Path(root)}/ (`tar xzf stl10_binary.tar.gz -C {Path(root)}`) so that {stl_dir(root)}/ holds "
            "train_X.bin, train_y.bin, test_X.bin and test_y.bin")


def locate_stl10(root):
    names = [f"{s}_{k}.bin" for s in ("train", "test") for k in "Xy"]
    return str(stl_dir(root)) if all((stl_dir(root) / n).is_file() for n in names) else None


def read_stl10(split, root, image_size):
    the_hint = stl_hint(root)
    if locate_stl10(root) is None:
        archive = Path(root) / "stl10_binary.tar.gz"
        where = f"{archive} is there but not unpacked" if archive.exists() else f"no complete {stl_dir(root)}/"
        raise UserError(f"STL-10 is not installed ({where}); {the_hint}")
    x_path, y_path = stl_dir(root) / f"{split}_X.bin", stl_dir(root) / f"{split}_y.bin"
    x, y = read_bytes(x_path, the_hint), read_bytes(y_path, the_hint)
    per_image = 3 * STL_SIDE * STL_SIDE
    if len(x) % per_image or len(x) // per_image != len(y):
        fail(x_path, f"holds {len(x)} bytes for {len(y)} labels in {y_path.name}; expected "
                     f"{len(y)} x {per_image} (truncated?)", the_hint)
    labels = np.frombuffer(y, np.uint8).astype(np.int64) - 1
    if labels.min() < 0 or labels.max() > 9:
        fail(y_path, "holds labels outside 1..10", the_hint)
    images = np.frombuffer(x, np.uint8).reshape(-1, 3, STL_SIDE, STL_SIDE).transpose(0, 1, 3, 2)
    return resize(np.ascontiguousarray(images), image_size), labels
