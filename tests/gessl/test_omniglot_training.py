"""Training on Omniglot's real minimal sets (``../shared/data/omniglot``; skipped where absent)."""
import os

import numpy as np

from gessl import train
from gessl.evaluate import evaluate_run
from tasks.evaluation.fewshot import mean_ci95
from tests.tasks.data.test_omniglot import REAL, real_files


@real_files
def test_simclr_on_the_minimal_sets_beats_a_random_backbone_on_lakes_runs(tmp_path):
    out = tmp_path / "run"
    path = f"{tmp_path / 'cache'}{os.pathsep}{REAL}"
    train.main(["--dataset", "omniglot-small", "--meta", "none", "--max-steps", "30", "--batch-size", "64",
                "--eval-episodes", "0", "--data-root", path, "--out", str(out)])
    records = evaluate_run(out, "quick", axes=["generalization"], episodes=5)
    assert {r["dataset"] for r in records} == {"omniglot-lake"}  # the runs: unseen alphabets
    with np.load(out / "episodes.npz") as saved:
        accuracy = {name.split("/")[0]: saved[name] for name in saved.files if "/omniglot-lake/" in name}
    assert sorted(accuracy) == ["run", "run (pixels: modified Hausdorff)", "run (random init)"]
    gain, ci95 = mean_ci95(accuracy["run"] - accuracy["run (random init)"])  # paired over the 20 runs
    assert gain - ci95 > 0, (gain, ci95)
