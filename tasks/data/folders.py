"""Image files in folders: CUB-200-2011 and any ImageFolder tree (EuroSAT, CropDisease, ...).

- ``cub`` (Wah et al. 2011), ``ROOT/CUB_200_2011/`` as unpacked from CUB_200_2011.tgz: ``images/``,
  ``images.txt`` (id, path) and ``train_test_split.txt`` (id, 1 = train). Few-shot splits are
  those of Chen et al., "A Closer Look at Few-shot Classification" (ICLR 2019): the 200 class
  folders in sorted order, index i in ``background`` when i % 2 == 0 (100 classes),
  ``validation`` when i % 4 == 1 (50), ``evaluation`` when i % 4 == 3 (50); ``train`` and ``test``
  are the official split of the images of all 200 classes.
- ``folder:NAME``: any ImageFolder tree at ``ROOT/NAME`` (or an absolute path, folder or zip/tar),
  either ``CLASS/.../IMAGE`` (one split, ``evaluation``: the whole tree is an unseen domain, as
  BSCD-FSL uses EuroSAT or CropDisease) or ``SPLIT/CLASS/.../IMAGE`` with split folders named
  train, val(id)/validation, test, background or evaluation. One wrapping folder (EuroSAT's
  ``2750/``) is looked through. Classes are the sorted class folder names of each split.
Colour sets are decoded as RGB, the shorter side scaled to the size asked and the centre cropped.
Why this reader and not torchvision's or learn2learn's: see ``tasks.data.formats``.
"""
from pathlib import Path

from tasks.common.errors import UserError
from tasks.data.formats import Tree, decode_all, fail, is_image, renumber, require

CUB_DIR = "CUB_200_2011"
CUB_SPLITS = ("background", "validation", "evaluation", "train", "test")
SPLIT_FOLDERS = {"train": "train", "val": "validation", "valid": "validation", "validation": "validation",
                 "test": "test", "background": "background", "evaluation": "evaluation"}


def cub_hint(root):
    return (f"download CUB_200_2011.tgz (https://www.vision.caltech.edu/datasets/cub_200_2011/) and unpack "
            f"it into {Path(root)}/ (`tar xzf CUB_200_2011.tgz -C {Path(root)}`) so that "
            f"{Path(root) / CUB_DIR}/ holds images/, images.txt and train_test_split.txt")


def locate_cub(root):
    folder = Path(root) / CUB_DIR
    ok = (folder / "images").is_dir() and all((folder / f).is_file() for f in ("images.txt", "train_test_split.txt"))
    return str(folder) if ok else None


def _table(path, the_hint):
    """{image id: value} of a two-column CUB text file."""
    rows = {}
    for number, line in enumerate(require(path, "CUB index file", the_hint).read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[0].isdigit():
            fail(path, f"line {number} is not `IMAGE_ID VALUE`", the_hint)
        rows[int(fields[0])] = fields[1]
    return rows


def _cub_index(split, root):
    folder, the_hint = Path(root) / CUB_DIR, cub_hint(root)
    if locate_cub(root) is None:
        raise UserError(f"CUB-200-2011 is not installed (no complete {folder}/); {the_hint}")
    paths = _table(folder / "images.txt", the_hint)
    is_train = _table(folder / "train_test_split.txt", the_hint)
    if set(is_train) != set(paths) or any("/" not in p for p in paths.values()):
        fail(folder, "has images.txt and train_test_split.txt that do not list the same CLASS/IMAGE files",
             the_hint)
    ids = sorted(paths)
    class_of = {i: paths[i].split("/")[0] for i in ids}
    order = {name: i for i, name in enumerate(sorted(set(class_of.values())))}
    keep = {"background": lambda i: order[class_of[i]] % 2 == 0,
            "validation": lambda i: order[class_of[i]] % 4 == 1,
            "evaluation": lambda i: order[class_of[i]] % 4 == 3,
            "train": lambda i: is_train[i] == "1",
            "test": lambda i: is_train[i] == "0"}[split]
    chosen = [i for i in ids if keep(i)]
    return Tree(folder / "images", the_hint), [paths[i] for i in chosen], [class_of[i] for i in chosen]


def count_cub(split, root):
    _, names, classes = _cub_index(split, root)
    return len(names), len(set(classes))


def read_cub(split, root, image_size):
    tree, names, classes = _cub_index(split, root)
    missing = sorted(set(names) - set(tree.names()))
    if missing:
        fail(Path(root) / CUB_DIR / "images", f"lacks {len(missing)} image(s) listed in images.txt, e.g. "
                                              f"{missing[0]}", cub_hint(root))
    return decode_all(tree, names, image_size, "RGB", cub_hint(root)), renumber(classes)


def folder_path(name, root):
    return Path(name) if Path(name).is_absolute() else Path(root) / name


def folder_hint(name, root):
    return (f"put an ImageFolder tree at {folder_path(name, root)} (CLASS/IMAGE files, or SPLIT/CLASS/IMAGE "
            f"with SPLIT one of {', '.join(sorted(SPLIT_FOLDERS))}), e.g. EuroSAT's 2750/ folder or a zip of it")


def folder_layout(name, root):
    """The tree and {split: ([image files], [class of each])} of an ImageFolder tree."""
    path, the_hint = folder_path(name, root), folder_hint(name, root)
    if not path.exists():
        raise UserError(f"no folder or archive {path}; {the_hint}")
    tree = Tree(path, the_hint)
    names = [n for n in tree.names() if is_image(n)]
    parts = [n.split("/") for n in names]
    while parts and len({p[0] for p in parts}) == 1 and all(len(p) >= 3 for p in parts) \
            and parts[0][0].lower() not in SPLIT_FOLDERS:
        parts = [p[1:] for p in parts]  # look through a wrapping folder
    if not parts or any(len(p) < 2 for p in parts):
        fail(path, "is not an ImageFolder tree (image files must lie in class folders)", the_hint)
    by_split = all(p[0].lower() in SPLIT_FOLDERS and len(p) >= 3 for p in parts)
    layout = {}
    for name_, p in zip(names, parts):
        split, cls = (SPLIT_FOLDERS[p[0].lower()], p[1]) if by_split else ("evaluation", p[0])
        files, classes = layout.setdefault(split, ([], []))
        files.append(name_)
        classes.append(cls)
    return tree, layout


def folder_splits(name, root):
    return tuple(sorted(folder_layout(name, root)[1]))


def count_folder(name, split, root):
    files, classes = _folder_split(name, split, root)[1]
    return len(files), len(set(classes))


def read_folder(name, split, root, image_size):
    tree, (files, classes) = _folder_split(name, split, root)
    return decode_all(tree, files, image_size, "RGB", folder_hint(name, root)), renumber(classes)


def _folder_split(name, split, root):
    tree, layout = folder_layout(name, root)
    if split not in layout:
        raise UserError(f"folder:{name} has no split {split!r}; its splits: {', '.join(sorted(layout))}")
    return tree, layout[split]
