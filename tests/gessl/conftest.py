"""Fixtures of the evaluation tests: a data folder with another domain, and a tiny trained run."""
import fcntl
import gzip
import pickle

import numpy as np
import pytest

from gessl import train
from tasks.data.registry import load_split


def fake_mnist(root, sizes=(300, 10, 201)):
    """MNIST's pickle (train, validation, test; ``sizes`` images) with labels 0..9 in turn: another
    domain on disk. Two processes embed unequal shares of the odd test split."""
    rng = np.random.default_rng(0)
    parts = []
    for n in sizes:
        parts.append((rng.random((n, 784), dtype=np.float32), np.arange(n, dtype=np.int64) % 10))
    (root / "mnist").mkdir(parents=True)
    (root / "mnist" / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(tuple(parts), protocol=2)))


@pytest.fixture(scope="session")
def data_root(glyph_root, tmp_path_factory):
    """The session's glyphs (with their held-out drawings) and a fake MNIST in one data folder."""
    with open(glyph_root / ".lock", "w") as lock:  # one xdist worker draws the held-out set
        fcntl.flock(lock, fcntl.LOCK_EX)
        load_split("glyphs", "heldout", glyph_root)
    root = tmp_path_factory.mktemp("data")
    for cached in glyph_root.glob("glyphs-*.npz"):
        (root / cached.name).symlink_to(cached)
    fake_mnist(root)
    return root


@pytest.fixture(scope="session")
def trained_run(data_root, tmp_path_factory):
    """A two-step run folder named ``run``, not evaluated: copy it before evaluating."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train.main(["--out", str(out), "--max-steps", "2", "--batch-size", "16", "--eval-episodes", "0",
                "--data-root", str(data_root)])
    return out
