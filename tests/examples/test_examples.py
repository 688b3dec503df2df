"""The examples run as a user runs them, on tiny data (examples/gessl_loop.py runs in tests/gessl/test_api.py,
from a folder outside the project)."""
import os
import subprocess
import sys

import numpy as np
import torch
import torchvision
from PIL import Image

from gessl import evaluate
from tests.gessl.conftest import data_root  # noqa: F401 (the fixture)
from tests.helpers import REPO, jsonl


def image_folder(root, classes=5, per_class=20, size=12):
    """An ImageFolder tree ``CLASS/IMAGE.png``: each class a bright square at its own place, with noise."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            pixels[2 * c:2 * c + 4, 2 * c:2 * c + 4] = 255
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def test_score_resnet_scores_two_registry_sets_and_a_folder_like_the_command_line(data_root, tmp_path):  # noqa: F811
    torch.manual_seed(4)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pt")
    folder = image_folder(tmp_path / "tree")
    done = subprocess.run([sys.executable, str(REPO / "examples" / "score_resnet.py"), "--weights", "resnet18.pt",
                           "--datasets", "glyphs", "mnist", "--folder", "tree", "--out", "example",
                           "--data-root", str(data_root), "--episodes", "3", "--classes", "5"],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    records = jsonl(tmp_path / "example" / "results.jsonl")
    fewshot = {(r["run"], r["dataset"], r["shots"]): r["value"] for r in records if r["protocol"] == "fewshot"}
    datasets = ("glyphs", "mnist", f"folder:{folder}")
    assert set(fewshot) == {(run, d, k) for run in ("example", "example (random init)") for d in datasets
                            for k in (1, 5)}
    assert len(done.stdout.splitlines()) == len(fewshot)  # one printed line per few-shot record
    evaluate.main(["--backbone", "torchvision:resnet18", "--weights", str(tmp_path / "resnet18.pt"),
                   "--in-channels", "3", "--image-size", "32", "--datasets", *datasets, "--out",
                   str(tmp_path / "cli" / "example"), "--data-root", str(data_root), "--suite", "quick",
                   "--episodes", "3", "--classes", "5"])
    cli = jsonl(tmp_path / "cli" / "example" / "results.jsonl")
    assert fewshot == {(r["run"], r["dataset"], r["shots"]): r["value"] for r in cli if r["protocol"] == "fewshot"}
