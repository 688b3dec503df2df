"""What several test files share: the repository's root, JSON lines read back plainly (not with
the reader under test), the text a PDF figure draws and the training CLI run as a user runs it."""
import json
import re
import subprocess
import sys
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def jsonl(path):
    """The JSON objects of the lines of ``path``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def drawn_text(pdf):
    """The text a matplotlib PDF (``pdf.fonttype`` 42) draws: one string per text object (``BT`` ...
    ``ET``), its pieces joined. Such a PDF gives each character as its two-byte code (UTF-16-BE) in
    literal strings of compressed content streams; mathtext draws its glyphs, not the ``$`` around them."""
    texts = []
    for stream in re.findall(rb"stream\r?\n(.*?)endstream", Path(pdf).read_bytes(), re.S):
        try:
            content = zlib.decompress(stream)
        except zlib.error:  # an embedded font or image, not drawing commands
            continue
        for block in re.findall(rb"\bBT\b(.*?)\bET\b", content, re.S):
            pieces = re.findall(rb"\(((?:\\.|[^\\)])*)\)", block, re.S)
            texts.append(b"".join(re.sub(rb"\\(.)", rb"\1", p, flags=re.S) for p in pieces).decode("utf-16-be"))
    return texts


def metrics(run_dir):
    """The training log of ``run_dir``."""
    return jsonl(Path(run_dir) / "metrics.jsonl")


def train_cli(*args, cwd=REPO):
    """``python -m gessl.train ARGS`` in ``cwd``, its output captured."""
    return subprocess.run([sys.executable, "-m", "gessl.train", *args], cwd=cwd, capture_output=True, text=True)
