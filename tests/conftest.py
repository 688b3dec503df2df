"""Shared fixtures: one real glyph data set per test session, generated once for all workers.

Each pytest-xdist worker runs torch on one thread: with `make test`'s two workers on a 2-core
machine, more threads only oversubscribe the cores (tiny ops then stall, up to 30x slower).
No test fetches data from the package registries (``$GESSL_OFFLINE``).
"""
import fcntl
import os

import pytest
import torch

from tasks.data.glyphs import load_glyphs

torch.set_num_threads(1)
os.environ["GESSL_OFFLINE"] = "1"  # no test fetches from the package registries (`gessl.evaluate --offline`)


@pytest.fixture(scope="session")
def glyph_root(tmp_path_factory):
    """A cache folder holding the default glyph set (28x28, seed 0), also set as ``$GESSL_DATA``.

    pytest-xdist workers share the folder; a file lock makes the first one generate the set and
    the others read it from the cache.
    """
    root = tmp_path_factory.getbasetemp().parent / "glyph-cache"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        load_glyphs(root=root, progress=False)
    previous = os.environ.get("GESSL_DATA")
    os.environ["GESSL_DATA"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("GESSL_DATA", None)
    else:
        os.environ["GESSL_DATA"] = previous
