"""The run folder of a training, claimed for as long as the training runs.

``claimed(run_dir, fresh)`` creates the folder (one line when it cannot be: a file in the way, a
read-only or virtual file system) and locks it with ``flock`` on its ``.lock`` file, so a second
training with the same ``--out`` is refused while the first runs; the kernel drops the lock when
its process ends, however it ends (even ``kill -9``), so a killed run never leaves it stuck. It
refuses a folder whose JSON-lines files are symbolic links (``tasks.common.io.refuse_links``),
then removes the temporaries a killed writer left, and on a fresh start the training log of a run
that was stopped before its first checkpoint, so the new run begins with clean files. When the
start fails before anything was logged (bad data, Ctrl-C while the data are generated), a folder
that this start created is removed again.

``evaluating(run_dir)`` holds a shared ``flock`` on the same ``.lock`` while a run is evaluated: an
evaluation of a folder being trained is refused (one line), and so is a training started on a folder
being evaluated, so no evaluation scores a backbone that changes under it; several evaluations of one
folder run side by side (docs/run_folders.md).
"""
import contextlib
import os
from contextlib import contextmanager

from tasks.common.errors import UserError
from tasks.common.io import make_folder, refuse_links, remove_temporaries, try_lock

WRITTEN = ("checkpoint.pt", "backbone.pt", "config.yaml", "data.json", "metrics.jsonl")  # what training writes
APPENDED = ("metrics.jsonl", "results.jsonl")  # appended in place: never through a symbolic link
LOCK = ".lock"


@contextmanager
def claimed(run_dir, fresh):
    """Create and lock ``run_dir`` for the block (see the module docstring); ``fresh``: a new run,
    not a ``--resume``."""
    created, fd = not run_dir.exists(), None
    try:
        make_folder(run_dir)
        fd = try_lock(run_dir / LOCK)
        if fd is None:
            raise UserError(f"{run_dir} is in use by another training or an evaluation (it holds "
                            f"{run_dir / LOCK}); wait for it to end or choose another --out")
        refuse_links(run_dir, APPENDED)
        remove_temporaries(run_dir, WRITTEN)
        if fresh:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        yield
    except BaseException:
        if created and fd is None and (run_dir / LOCK).exists():
            fd = try_lock(run_dir / LOCK)  # a signal came while this start locked: clean up unless another holds it
        if created and fd is not None and not any((run_dir / n).exists() for n in ("checkpoint.pt", "metrics.jsonl")):
            for name in (LOCK, "config.yaml", "data.json"):
                (run_dir / name).unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):  # not empty: another start's, or things to keep
                run_dir.rmdir()
        raise
    finally:
        if fd is not None:
            os.close(fd)


@contextmanager
def evaluating(run_dir):
    """Hold a shared lock on ``run_dir``'s ``.lock`` for the block; a ``UserError`` when a training
    holds it (see the module docstring)."""
    fd = try_lock(run_dir / LOCK, shared=True)
    if fd is None:
        raise UserError(f"{run_dir} is being trained (a training holds {run_dir / LOCK}), so its backbone "
                        f"is not final: evaluate it once the training ends")
    try:
        yield
    finally:
        os.close(fd)
