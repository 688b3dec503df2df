"""Folders on a tiny or read-only disk, for the tests of what happens when the disk says no.

Where this process may mount file systems (root in a container that allows it), the folder is a
real tmpfs of the given size, so every writer meets a real full disk, subprocesses included;
elsewhere ``os.fsync`` is patched to fail with ENOSPC once the files under the folder outgrow the
size (how a file system with delayed allocation reports a full disk), which only this process sees.
"""
import errno
import os
import subprocess
from contextlib import contextmanager


def _mount(*args):
    try:
        return subprocess.run(["mount", *args], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


def _usage(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@contextmanager
def small_disk(folder, kib, monkeypatch):
    """``folder`` holding at most ``kib`` KiB for the block; yields whether it is a real tmpfs."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = _mount("-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder))
    if not mounted:
        real_fsync = os.fsync

        def fsync(fd):
            if _usage(folder) > kib * 1024:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@contextmanager
def read_only_disk(folder):
    """``folder`` on a read-only tmpfs for the block; yields False (nothing mounted) where this
    process may not mount one."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = _mount("-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(folder))
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
