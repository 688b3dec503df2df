"""Training the label-using references: episodes in place of batches, exact resume of episodic runs,
every reference with DSA, and the early refusal of MAML inside GeSSL."""

import pytest
import torch

from gessl import train
from tasks.common.errors import UserError
from tests.gessl.interrupt import interrupted_at
from tests.helpers import metrics, train_cli

TINY = ["--log-every", "1", "--eval-episodes", "0", "--warmup-steps", "2", "--episode-ways", "4",
        "--episode-shots", "2", "--episode-queries", "2", "--maml-inner-steps", "2"]


def test_an_episodic_method_trains_on_episodes_whatever_the_batch_size(glyph_root, tmp_path, monkeypatch):
    seen = []
    real_forward = train.SSLModel.forward

    def recording_forward(self, batch):
        seen.append(batch)
        return real_forward(self, batch)

    monkeypatch.setattr(train.SSLModel, "forward", recording_forward)
    train.main(TINY + ["--base", "protonet", "--meta", "none", "--batch-size", "100000", "--max-steps", "2",
                       "--out", str(tmp_path / "run")])
    assert len(seen) == 2
    for batch in seen:
        assert batch["images"].shape == (16, 1, 28, 28) and [v.shape for v in batch["views"]] == [(16, 1, 28, 28)] * 2
        assert batch["labels"].tolist() == [0, 1, 2, 3] * 4
        assert not torch.equal(batch["views"][0], batch["views"][1])
    assert not torch.equal(seen[0]["images"], seen[1]["images"])
    assert [r["img_per_s"] > 0 for r in metrics(tmp_path / "run")] == [True, True]


@pytest.mark.parametrize("base, meta", [("protonet", "none"), ("protonet", "gessl"), ("maml", "none")])
def test_episodic_resume_after_interrupt_matches_uninterrupted_run(glyph_root, tmp_path, monkeypatch, base, meta):
    flags = TINY + ["--base", base, "--meta", meta, "--max-steps", "5", "--ckpt-every", "100"]
    train.main(flags + ["--out", str(tmp_path / "straight")])

    with interrupted_at(monkeypatch, 2), pytest.raises(UserError, match="stopped by SIGINT after step 3, saved"):
        train.main(flags + ["--out", str(tmp_path / "stopped")])
    train.main(["--out", str(tmp_path / "stopped"), "--resume"])

    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 5
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["loss"] for r in metrics(tmp_path / "stopped")] == [r["loss"] for r in metrics(tmp_path / "straight")]


@pytest.mark.parametrize("base, meta, term", [("supervised", "none", "cross_entropy"),
                                              ("supervised", "gessl", "sigma_kl"),
                                              ("protonet", "gessl", "proto_accuracy"),
                                              ("maml", "none", "maml_query_loss")])
def test_every_reference_runs_with_dsa(glyph_root, tmp_path, base, meta, term):
    train.main(TINY + ["--base", base, "--meta", meta, "--reg", "dsa", "--batch-size", "16", "--max-steps", "2",
                       "--out", str(tmp_path / "run")])
    assert all({term, "dsa_loss"} <= r.keys() for r in metrics(tmp_path / "run"))


def test_cli_refuses_maml_inside_gessl_with_one_line_and_writes_nothing(tmp_path):
    result = train_cli("--base", "maml", "--meta", "gessl", "--out", "run", cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--base maml is itself a meta-learner and cannot run inside --meta gessl" in result.stderr
    assert "use --meta none" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_gessl_sets_too_small_for_an_episode_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(UserError, match="the 40-image episodes .* fewer than 40 images"):
        train.main(["--base", "protonet", "--episode-shots", "1", "--episode-queries", "1",
                    "--out", str(tmp_path / "run")])
    assert list(tmp_path.iterdir()) == []
