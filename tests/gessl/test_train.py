"""Training: the run folder, loss going down, exact resume, and clean failures on bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gessl import train
from gessl.backbones import load_backbone
from tasks.errors import UserError
from tests.gessl.interrupt import interrupted_at

REPO = Path(__file__).resolve().parents[2]
TINY = ["--batch-size", "32", "--log-every", "1", "--eval-episodes", "0", "--warmup-steps", "2", "--meta", "none"]


def run_train(out, *flags):
    train.main(TINY + ["--out", str(out), *flags])


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_holds_config_metrics_checkpoint_and_backbone(glyph_root, tmp_path):
    out = tmp_path / "run"
    run_train(out, "--max-steps", "3", "--ckpt-every", "2")
    assert (out / "config.yaml").read_text().count("max_steps: 3") == 1
    records = metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all({"step", "epoch", "loss", "nt_xent", "lr"} <= r.keys() for r in records)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 3
    backbone, meta = load_backbone(out / "backbone.pt")
    assert meta["name"] == "conv4"
    trained = {k[len("backbone."):]: v for k, v in state["model"].items() if k.startswith("backbone.")}
    assert all(torch.equal(trained[k], v) for k, v in backbone.state_dict().items())
    assert sorted(p.name for p in out.iterdir()) == ["backbone.pt", "checkpoint.pt", "config.yaml", "metrics.jsonl"]


def test_loss_goes_down(glyph_root, tmp_path):
    out = tmp_path / "run"
    run_train(out, "--max-steps", "30", "--lr", "3e-3", "--batch-size", "64")
    losses = [r["loss"] for r in metrics(out)]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2


@pytest.mark.parametrize("meta, reg", [("none", "none"), ("gessl", "none"), ("gessl", "dsa")])
def test_resume_after_interrupt_matches_uninterrupted_run(glyph_root, tmp_path, monkeypatch, meta, reg):
    flags = ["--max-steps", "6", "--ckpt-every", "100", "--meta", meta, "--reg", reg]
    run_train(tmp_path / "straight", *flags)

    with interrupted_at(monkeypatch, 4), pytest.raises(UserError, match="--resume"):
        run_train(tmp_path / "stopped", *flags)
    assert torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)["step"] == 4
    train.main(["--out", str(tmp_path / "stopped"), "--resume"])

    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["step"] for r in metrics(tmp_path / "stopped")] == list(range(1, 7))
    assert [r["loss"] for r in metrics(tmp_path / "stopped")] == [r["loss"] for r in metrics(tmp_path / "straight")]
    if meta == "gessl":
        logged = {"sigma", "query_loss", "inner_loss_0", "time_inner", "time_target", "time_outer",
                  "grad_norm_sigma", "sigma_grad_share"}
        assert all(logged <= r.keys() and r["sigma"] >= 0 for r in metrics(tmp_path / "straight"))
    if reg == "dsa":
        assert all({"dsa_loss", "dsa_prior", "dsa_outlier_share"} <= r.keys() for r in metrics(tmp_path / "straight"))
        assert any(k.startswith("regulariser.prior.") for k in a["model"])  # the EMA prior resumes too


def test_resume_drops_metrics_logged_after_the_checkpoint(glyph_root, tmp_path):
    out = tmp_path / "run"
    run_train(out, "--max-steps", "4", "--ckpt-every", "2")
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["step"] = 2  # as if the process died after logging steps 3 and 4 but before their checkpoint
    torch.save(state, out / "checkpoint.pt")
    train.main(["--out", str(out), "--resume", "--max-steps", "2"])
    assert [r["step"] for r in metrics(out)] == [1, 2]


def test_nan_loss_is_a_user_error(glyph_root, tmp_path):
    with pytest.raises(UserError, match="lower --lr"):
        run_train(tmp_path / "run", "--max-steps", "5", "--lr", "1e30", "--warmup-steps", "0")


def cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "gessl.train", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("flags, message", [
    (["--base", "nope", "--out", "run"], "unknown --base 'nope'"),
    (["--epochs", "0", "--out", "run"], "--epochs must be positive"),
    (["--resume"], "--resume needs --out"),
    (["--resume", "--out", "run"], "not a run folder"),
    (["--reg", "dsa", "--dsa-prior", "nope.pt", "--out", "run"], "--dsa-prior 'nope.pt' is neither"),
    (["--dsa-ema", "1", "--out", "run"], "--dsa-ema must be in [0, 1)"),
])
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, flags, message):
    result = cli(*flags, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_to_overwrite_and_reports_corrupt_checkpoint(glyph_root, tmp_path):
    out = tmp_path / "run"
    run_train(out, "--max-steps", "1")
    before = (out / "metrics.jsonl").read_bytes()
    result = cli("--out", str(out), "--max-steps", "1")
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert (out / "metrics.jsonl").read_bytes() == before
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    result = cli("--out", str(out), "--resume")
    assert result.returncode == 2 and "corrupt" in result.stderr and "Traceback" not in result.stderr
