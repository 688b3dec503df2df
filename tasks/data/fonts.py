"""The glyph set's fonts: the pinned default fonts, found by content, and their install command.

The default glyph set draws with the 40 fonts pinned in ``tasks/data/glyph_fonts.json``, in its order:
each a file name, its SHA-256 and the registry package it comes from (PyPI ``matplotlib==3.11.2``;
Debian ``fonts-dejavu-core`` and ``fonts-dejavu-extra`` 2.37-6). Matplotlib's ``DejaVuSans.ttf`` and
Debian's are other files under one name, so they are told apart by checksum. Each pinned font is the
first file with its name and its SHA-256 in, in this order: the project's font folder
(``FONT_DIR/PACKAGE/NAME``, beside the virtual environment: ``sys.prefix/share/gessl/fonts``),
matplotlib's ``mpl-data/fonts/ttf`` and the system font folders (``SYSTEM_FONT_DIRS``). No other font
on the machine enters the default set; a pinned font that cannot be found with its checksum is a
``UserError`` that says to run the install command.

``python -m tasks.data.fonts install [--from FILE ...]`` puts every pinned font into ``FONT_DIR``: copied
from matplotlib's or the system's folders when a file there has the pinned checksum, else taken
from its package, downloaded from the registry (``tasks.data.fetch``) or given with ``--from`` (a wheel or
``.deb`` already downloaded; nothing is downloaded then). Each file's SHA-256 is checked before it is
copied in (through a temporary, then renamed); a file whose checksum differs is never installed.
``make install`` runs it. ``glyphs-noto`` adds its Noto fonts (``font_dirs``) after the pinned ones.
"""
import argparse
import glob
import json
import os
import re
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib

from tasks.common.errors import UserError, run_cli
from tasks.data.fetch import apt_download, copy_into, deb_extract, pip_download, sha256

PINNED = Path(__file__).with_name("glyph_fonts.json")
FONT_DIR = Path(sys.prefix) / "share" / "gessl" / "fonts"
SYSTEM_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts")
INSTALL_HINT = "run `python -m tasks.data.fonts install` (`make install` runs it)"
# Fonts under ``font_dirs`` that are never used: LastResort (placeholder glyphs only), the BaKoMa
# ``cm*10`` fonts (their cmaps map ASCII code points to TeX glyphs) and STIX's private-use and
# size-variant fonts.
_SKIPPED_FONTS = re.compile(r"LastResort|^cm\w+10\.ttf$|^STIXNonUni|^STIXSiz", re.IGNORECASE)
_FONT_SUFFIXES = (".ttf", ".otf")
_checksums = {}


@dataclass(frozen=True)
class Font:
    """A pinned font: its file name, SHA-256 and the package (a key of the file's ``packages``)."""

    name: str
    sha256: str
    package: str

    def where(self):
        """Its place in the project's font folder."""
        return FONT_DIR / self.package / self.name


def pinned():
    """The pinned default fonts, in drawing order, and ``{package: {registry, version}}``."""
    return _read_pinned(PINNED)


@cache
def _read_pinned(path):
    doc = json.loads(Path(path).read_text())
    return [Font(**entry) for entry in doc["fonts"]], doc["packages"]


def checksum(path):
    """The SHA-256 of a file, remembered per (path, size, mtime) within the process."""
    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _checksums:
        _checksums[key] = sha256(path)
    return _checksums[key]


def matplotlib_fonts():
    """Matplotlib's own TrueType fonts (``mpl-data/fonts/ttf``), sorted."""
    return sorted(glob.glob(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "*.ttf")))


def extra_fonts(font_dirs):
    """Every font file under ``font_dirs`` (recursively, sorted per folder), less the skipped ones."""
    found = sorted(f for d in font_dirs for ext in _FONT_SUFFIXES
                   for f in glob.glob(os.path.join(str(d), "**", f"*{ext}"), recursive=True))
    return [f for f in found if not _SKIPPED_FONTS.search(Path(f).name)]


def _local_candidates():
    """{file name: [paths]} of the fonts in matplotlib's and the system's folders, in search order."""
    found = {}
    for path in matplotlib_fonts() + extra_fonts(SYSTEM_FONT_DIRS):
        found.setdefault(Path(path).name, []).append(path)
    return found


def _first_match(font, paths):
    """The first of ``paths`` holding ``font`` (its checksum), else None, and the ones that differ."""
    differ = []
    for path in paths:
        if checksum(path) == font.sha256:
            return str(path), differ
        differ.append(str(path))
    return None, differ


def default_fonts():
    """The files of the pinned default fonts, in order; a ``UserError`` when any cannot be found."""
    fonts, packages = pinned()
    local = _local_candidates()
    found, missing, differ = [], [], []
    for font in fonts:
        own = [font.where()] if font.where().is_file() else []
        path, wrong = _first_match(font, own + local.get(font.name, []))
        if path:
            found.append(path)
        else:
            (differ if wrong else missing).append((font, wrong))
    if missing or differ:
        font, wrong = (differ + missing)[0]
        example = (f"{wrong[0]} is not the pinned {font.name} of {_spec(font.package, packages)}" if wrong
                   else f"{font.name} of {_spec(font.package, packages)} is in none of {FONT_DIR}, "
                        f"matplotlib's fonts or {', '.join(SYSTEM_FONT_DIRS)}")
        raise UserError(f"of the {len(fonts)} pinned glyph fonts {len(missing)} are missing and {len(differ)} have "
                        f"another SHA-256 (e.g. {example}); {INSTALL_HINT}")
    return found


def font_files(font_dirs=()):
    """The font files glyphs draws with: the pinned default fonts, then every font under ``font_dirs``."""
    return default_fonts() + extra_fonts(font_dirs)


def font_list(fonts):
    """``[[file name, sha256], ...]`` of ``fonts``: what a glyph set was drawn with, for the record."""
    return [[Path(f).name, checksum(f)] for f in fonts]


def _spec(package, packages):
    info = packages[package]
    return f"{package}=={info['version']}" if info["registry"] == "pypi" else f"{package} {info['version']}"


def _take(todo, paths):
    """Copy into the font folder each font of ``todo`` found (by checksum) among ``paths``; the
    fonts copied are removed from ``todo``, and the files with a pinned name but another checksum
    are returned."""
    by_name = {}
    for path in paths:
        by_name.setdefault(Path(path).name, []).append(path)
    copied, refused = 0, []
    for font in list(todo):
        path, wrong = _first_match(font, by_name.get(font.name, []))
        if path:
            copy_into([path], font.where().parent)
            todo.remove(font)
            copied += 1
        else:
            refused += wrong
    return copied, refused


def _unpack(archive, dest, hint):
    """The font files of a wheel or a ``.deb``, unpacked under ``dest``."""
    archive = Path(archive)
    if archive.suffix == ".whl":
        try:
            with zipfile.ZipFile(archive) as wheel:
                for member in wheel.namelist():
                    if member.endswith(_FONT_SUFFIXES):
                        wheel.extract(member, dest)
        except (OSError, zipfile.BadZipFile) as e:
            raise UserError(f"{archive} is not a readable wheel ({e}); {hint}") from None
    elif archive.suffix == ".deb":
        deb_extract(archive, dest, hint)
    else:
        raise UserError(f"{archive} is neither a wheel (.whl) nor a Debian package (.deb); {hint}")
    return sorted(str(p) for p in Path(dest).rglob("*") if p.suffix in _FONT_SUFFIXES and p.is_file())


def _download(package, packages, dest):
    """The wheel or ``.deb`` of a pinned package, downloaded from its registry into ``dest``."""
    info = packages[package]
    if info["registry"] == "pypi":
        spec = f"{package}=={info['version']}"
        hint = (f"where PyPI can be reached run `pip download --no-deps --only-binary=:all: {spec}`, then "
                f"`python -m tasks.data.fonts install --from {package}-{info['version']}-*.whl`")
        return pip_download(spec, dest, hint)
    hint = (f"where Debian's archive can be reached run `apt-get download {package}={info['version']}`, then "
            f"`python -m tasks.data.fonts install --from {package}_{info['version']}_all.deb`")
    return apt_download(package, dest, hint, version=info["version"])


def install(sources=(), download=None):
    """Put every pinned font into ``FONT_DIR``; one line saying what was done.

    ``sources``: wheels or ``.deb`` files to take the fonts from (then nothing is downloaded).
    ``download`` (None: unless ``$GESSL_OFFLINE`` is 1): fetch the packages still needed."""
    fonts, packages = pinned()
    hint = (f"pass the pinned packages' wheel or .deb files ({', '.join(_spec(p, packages) for p in packages)}) "
            "with --from")
    for source in sources:
        if not Path(source).is_file():
            raise UserError(f"no file {source}; {hint}")
    if download is None:
        download = not sources and os.environ.get("GESSL_OFFLINE") != "1"
    todo = [f for f in fonts if not (f.where().is_file() and checksum(f.where()) == f.sha256)]
    present = len(fonts) - len(todo)
    local, _ = _take(todo, [p for paths in _local_candidates().values() for p in paths])
    fetched, refused = 0, []
    with tempfile.TemporaryDirectory() as tmp:
        archives = list(sources) if sources else []
        if download:
            archives += [_download(p, packages, Path(tmp) / "download") for p in dict.fromkeys(f.package for f in todo)]
        for i, archive in enumerate(archives):
            if not todo:
                break
            copied, wrong = _take(todo, _unpack(archive, Path(tmp) / f"unpacked{i}", hint))
            fetched, refused = fetched + copied, refused + [f"{Path(archive).name}:{Path(w).name}" for w in wrong]
    done = (f"{present} already there, {local} copied from this machine, "
            f"{fetched} taken from {'the given files' if sources else 'the registries'}")
    if todo:
        why = (f"; {len(set(refused))} refused as their SHA-256 differs (e.g. {refused[0]})" if refused else "")
        raise UserError(f"{len(todo)} of the {len(fonts)} pinned glyph fonts could not be installed in {FONT_DIR} "
                        f"(e.g. {todo[0].name} of {_spec(todo[0].package, packages)}){why}; {done}; {hint}")
    return f"glyph fonts: the {len(fonts)} pinned fonts are in {FONT_DIR} ({done})"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tasks.data.fonts", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    put = commands.add_parser("install", help=f"put the pinned default glyph fonts into {FONT_DIR}")
    put.add_argument("--from", dest="sources", nargs="+", default=[], metavar="FILE",
                     help="wheels or .deb files already downloaded (offline; nothing is downloaded)")
    args = parser.parse_args(argv)
    print(install(args.sources), flush=True)


if __name__ == "__main__":
    run_cli(main)
