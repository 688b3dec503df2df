"""What several test files share: the repository's root, JSON lines read back plainly (not with
the reader under test) and the training CLI run as a user runs it."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def jsonl(path):
    """The JSON objects of the lines of ``path``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def metrics(run_dir):
    """The training log of ``run_dir``."""
    return jsonl(Path(run_dir) / "metrics.jsonl")


def train_cli(*args, cwd=REPO):
    """``python -m gessl.train ARGS`` in ``cwd``, its output captured."""
    return subprocess.run([sys.executable, "-m", "gessl.train", *args], cwd=cwd, capture_output=True, text=True)
