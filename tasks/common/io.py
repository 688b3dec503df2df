"""File writes that leave nothing half-written, and one-line errors when the disk says no.

- ``atomic_path`` / ``atomic_write_text`` / ``atomic_write_bytes``: write a temporary file beside the
  target, flush it to the disk (``fsync``), rename it over the target and flush the folder, so that
  neither a killed process nor a machine that loses power leaves a half-written file under the
  target's name; the previous file stays whole until the rename. A temporary left by a killed
  process (``.NAME.*.tmp``) is removed by ``remove_temporaries`` when its writer starts again.
- ``append_jsonl`` / ``read_jsonl``: JSON lines. Each append opens the file with ``O_APPEND``,
  holds an exclusive ``flock`` on it and writes its whole lines in one ``write``, so appends of
  several processes never mix or cut each other's lines (docs/run_folders.md). A killed writer can
  leave only its last line torn: the reader skips it and the next append, under the lock, removes
  it; any other bad line is an error naming the file and line. Values are standard JSON: a float
  that is not finite is written as ``null`` and named, with its value, under ``null_reason``.
- ``write_npz`` / ``read_npz`` / ``update_npz``: NumPy archives written atomically; read back with
  every expected array present (no pickles); ``update_npz`` reads, changes and rewrites one under
  an exclusive ``flock`` on its lock file ``.NAME.lock`` beside it, so no other process's change is lost.
- ``try_lock`` (exclusive or shared) / ``locked``: ``flock`` on a lock file, which the kernel drops when its
  process ends however it ends (even ``kill -9``), so a killed holder never leaves it stuck.
- Files are written and locked without following a symbolic link in their place (``O_NOFOLLOW``;
  ``atomic_path`` renames over the link itself), so nothing outside their folder is touched: a
  link where such a file should be is a ``UserError``.
- Text files a user may hand over (JSON lines, YAML) are read with ``read_text``: bytes that are
  not UTF-8 are a ``UserError`` naming the file.
- A full disk, a read-only file system, a missing permission or a file where a folder should be is
  a ``WriteError`` (a ``UserError``: one line, exit status 2) that names the path and what to do.
"""
import errno
import fcntl
import json
import math
import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tasks.common.errors import UserError

# What the disk (not the program) refuses: full, over quota, read-only, not permitted, too large.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


class WriteError(UserError):
    """A file or folder could not be written for a reason outside the program (see the module docstring)."""


def open_here(path, flags, mode=0o666):
    """``os.open`` of ``path`` that refuses a symbolic link in its place (``O_NOFOLLOW``) with a
    ``UserError``: a link could lead a write, a truncation or a new lock file out of its folder."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            refuse_links(Path(path).parent, [Path(path).name])
        raise


def refuse_links(folder, names):
    """A ``UserError`` (the one of ``open_here``) when one of the files ``names`` of ``folder`` is a
    symbolic link: checked before a program writes any of them, so it writes all or none."""
    for name in names:
        if (Path(folder) / name).is_symlink():
            raise UserError(f"{Path(folder) / name} is a symbolic link; it must be a plain file of its folder "
                            f"(nothing is written through a link): remove the link")


def try_lock(path, shared=False):
    """Take an exclusive (or ``shared``) ``flock`` on ``path`` (created when missing) without
    waiting: its open file descriptor (close it to release the lock), or ``None`` when another
    process holds a lock that excludes it."""
    try:
        fd = open_here(path, os.O_RDONLY | os.O_CREAT)
    except OSError as exc:
        if exc.errno in DISK_ERRORS:
            raise _write_error(path, exc) from None
        raise
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BaseException as exc:  # busy, or a signal came: nothing is left open or locked
        os.close(fd)
        if isinstance(exc, BlockingIOError):
            return None
        raise
    return fd


@contextmanager
def locked(path):
    """Hold an exclusive ``flock`` on ``path`` (created when missing) for the block, waiting for it."""
    fd = open_here(path, os.O_RDONLY | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_error(path, exc):
    reason = exc.strerror or str(exc)
    return WriteError(f"cannot write {path}: {reason}; free space or choose a writable folder "
                      f"(the file that was there is unchanged)")


def make_folder(path):
    """Create the folder ``path`` and its parents (nothing when it exists); a ``WriteError`` that
    says why when it cannot be (a file in the way, a read-only or virtual file system, no right)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise WriteError(f"cannot create the folder {path}: a file of that name is in the way; "
                         f"choose another path") from None
    except OSError as exc:
        raise WriteError(f"cannot create the folder {path}: {exc.strerror or exc}; choose a writable "
                         f"path") from None
    return path


def _fsync_folder(folder):
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; when the block succeeds, flush it to the disk and
    rename it over ``path``, else delete it. ``OSError``s of ``DISK_ERRORS`` become ``WriteError``."""
    path = Path(path)
    make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
            raise _write_error(path, exc) from None
        raise


def remove_temporaries(folder, names):
    """Delete the temporaries ``atomic_path`` left beside the files ``names`` of ``folder`` (a
    killed writer's); call it only while no other process writes those files."""
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path, data):
    """Write ``data`` (bytes or a buffer) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_npz(path, arrays, compressed=False):
    """``np.savez`` (or ``savez_compressed``) of the dict ``arrays`` into ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)


def update_npz(path, change, compressed=False):
    """Rewrite the ``.npz`` at ``path`` as ``change(arrays)`` returns it, ``arrays`` the dict of what it
    holds (empty when it is missing or unreadable), under an exclusive ``flock`` on ``.NAME.lock``
    beside it: concurrent updates each see the others' (see the module docstring)."""
    path = Path(path)
    make_folder(path.parent)
    with locked(path.parent / f".{path.name}.lock"):
        arrays = {}
        try:
            fd = open_here(path, os.O_RDONLY)
        except FileNotFoundError:
            fd = None
        if fd is not None:
            with open(fd, "rb") as f:
                try:
                    with np.load(f, allow_pickle=False) as old:
                        arrays = {name: old[name] for name in old.files}
                except (OSError, ValueError, EOFError, zipfile.BadZipFile):
                    arrays = {}
        write_npz(path, change(arrays), compressed)


def read_npz(path, keys):
    """``{key: array}`` of ``keys`` from the ``.npz`` at ``path``, pickles refused; a ``KeyError``
    naming the missing ones, or NumPy's ``ValueError`` / zip error for a damaged file."""
    with np.load(path, allow_pickle=False) as z:
        missing = sorted(set(keys) - set(z.files))
        if missing:
            raise KeyError(f"missing {missing}")
        return {k: z[k] for k in keys}


def standard_json(record):
    """``record`` with each float that is not finite replaced by None and named, with its value,
    under ``null_reason`` (JSON has no NaN or Infinity)."""
    reasons = {k: f"not finite ({v})" for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)}
    if not reasons:
        return record
    return {**{k: None if k in reasons else v for k, v in record.items()}, "null_reason": reasons}


def append_jsonl(path, records):
    """Append JSON objects as lines with one ``write`` of whole lines, flushed to the disk, holding
    an exclusive ``flock`` on the file (opened with ``O_APPEND``, never through a symbolic link).

    A torn last line (a killed writer's: a living one holds the lock) is cut off first. When the
    disk refuses the write the file is cut back to its whole lines and a ``WriteError`` is raised.
    """
    data = "".join(json.dumps(standard_json(r), allow_nan=False) + "\n" for r in records).encode()
    try:
        with open(open_here(path, os.O_RDWR | os.O_APPEND | os.O_CREAT), "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            size = f.seek(0, os.SEEK_END)
            whole = _whole_lines_length(f, size)
            f.seek(whole)
            if whole < size and _parses(f.read()):
                whole, data = size, b"\n" + data  # a last line without its line end, not torn
            try:
                f.truncate(whole)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                f.truncate(whole)
                raise
    except OSError as exc:
        if exc.errno in DISK_ERRORS:
            raise _write_error(path, exc) from None
        raise


def _whole_lines_length(f, size):
    """The length of the whole lines (up to the last line end) of the open file ``f`` of ``size`` bytes."""
    end = size
    while end > 0:
        start = max(0, end - (1 << 16))
        f.seek(start)
        at = f.read(end - start).rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0


def _parses(text):
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def read_text(path):
    """The text of the UTF-8 file ``path``; bytes that are not UTF-8 are a ``UserError`` naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start} cannot be decoded): it is damaged or not "
                        f"the file it should be; repair or delete it") from None


def read_jsonl(path):
    """Read a JSON-lines file into a list of dicts.

    A last line that is torn (no line end and not valid JSON: its writer was killed) is skipped;
    any other line that is not a JSON object, or bytes that are not UTF-8, are a ``UserError``
    naming the file (and line).
    """
    lines = read_text(path).split("\n")
    last = lines.pop()  # "" when the file ends with a line end
    if last and _parses(last):
        lines.append(last)
    return [_record(path, number, line) for number, line in enumerate(lines, 1)]


def _record(path, number, line):
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise UserError(f"{path}:{number} is not a JSON object, so the file is damaged; repair or delete "
                        f"that line")
    return record
