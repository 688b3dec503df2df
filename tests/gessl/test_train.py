"""Training: the run folder, loss going down, exact resume, and clean failures on bad input."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from gessl import train
from gessl.backbones import load_backbone
from gessl.config import read_run_config, resolve_config
from tasks.common.errors import UserError
from tests.disk import read_only_disk, small_disk
from tests.gessl.interrupt import interrupted_at
from tests.helpers import REPO, metrics, train_cli

TINY = ["--batch-size", "32", "--log-every", "1", "--eval-episodes", "0", "--warmup-steps", "2", "--meta", "none"]


def run_train(out, *flags):
    train.main(TINY + ["--out", str(out), *flags])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_optimizer_steps_as_its_formula(optimizer):
    """SGD: v ← 0.9 v + g + λw, w ← w − lr·v; Adam (bias-corrected, β = 0.9, 0.999, ε = 1e-8, L2 λw
    added to g); checked over two steps with a fixed gradient g."""
    cfg = resolve_config({"optimizer": optimizer, "lr": 0.1, "weight_decay": 0.01})
    model = torch.nn.Linear(3, 1, bias=False)
    w = model.weight.detach().clone().double()
    g = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    opt = train.build_optimizer(model, cfg)
    v, m, s = torch.zeros_like(w), torch.zeros_like(w), torch.zeros_like(w)
    for t in (1, 2):
        model.weight.grad = g.float().clone()
        opt.step()
        d = g + 0.01 * w
        if optimizer == "sgd":
            v = 0.9 * v + d
            w = w - 0.1 * v
        else:
            m, s = 0.9 * m + 0.1 * d, 0.999 * s + 0.001 * d ** 2
            w = w - 0.1 * (m / (1 - 0.9 ** t)) / ((s / (1 - 0.999 ** t)).sqrt() + 1e-8)
        torch.testing.assert_close(model.weight.detach().double(), w, atol=1e-6, rtol=0)


@pytest.mark.parametrize("base", ["simsiam", "byol"])
@pytest.mark.parametrize("scale", [10.0, 0.0])
def test_a_predictor_may_keep_a_constant_rate_while_the_rest_follows_the_schedule(glyph_root, tmp_path, base, scale):
    cfg = resolve_config({"base": base, "meta": "none", "batch_size": 32, "warmup_steps": 2, "max_steps": 4,
                          f"{base}_pred_lr": scale, "data_root": str(glyph_root)})
    trainer = train.Trainer(cfg, tmp_path)
    predictor = {id(p) for p in trainer.model.method.predictor.parameters()}
    groups = trainer.optimizer.param_groups
    assert [{id(p) for p in g["params"]} == predictor for g in groups] == ([False, True] if scale else [False])
    seen = []
    for step in range(4):
        before = {id(p): p.detach().clone() for p in trainer.model.parameters()}
        trainer.train_step()
        seen.append([g["lr"] for g in groups])
        assert all(not torch.equal(p, before[id(p)]) for p in trainer.model.method.predictor.parameters())
    schedule = [train.lr_at(step, cfg, 4) for step in range(4)]
    assert seen == [[lr, 2e-3 * scale] if scale else [lr] for lr in schedule]
    assert schedule[0] < schedule[1] > schedule[3]  # warm-up, then decay: the predictor's stays put


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
    assert sorted(p.name for p in out.iterdir()) == [".lock", "backbone.pt", "checkpoint.pt", "config.yaml",
                                                     "data.json", "metrics.jsonl"]


def test_loss_goes_down(glyph_root, tmp_path):
    out = tmp_path / "run"
    run_train(out, "--max-steps", "30", "--lr", "3e-3", "--batch-size", "64")
    losses = [r["loss"] for r in metrics(out)]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.2


@pytest.mark.parametrize("meta, reg", [("none", "none"), ("gessl", "none"), ("gessl", "dsa")])
def test_resume_after_interrupt_matches_uninterrupted_run(glyph_root, tmp_path, monkeypatch, meta, reg):
    flags = ["--max-steps", "6", "--ckpt-every", "100", "--meta", meta, "--reg", reg]
    run_train(tmp_path / "straight", *flags)

    with interrupted_at(monkeypatch, 3), pytest.raises(UserError, match="stopped by SIGINT after step 4, saved"):
        run_train(tmp_path / "stopped", *flags)
    assert torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)["step"] == 4  # the step finished
    train.main(["--out", str(tmp_path / "stopped"), "--resume"])

    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["step"] for r in metrics(tmp_path / "stopped")] == list(range(1, 7))
    assert [r["loss"] for r in metrics(tmp_path / "stopped")] == [r["loss"] for r in metrics(tmp_path / "straight")]
    if meta == "gessl":
        logged = {"sigma_kl", "query_loss", "inner_loss_0", "time_inner", "time_target", "time_outer",
                  "grad_norm_sigma_kl", "sigma_kl_grad_share"}
        assert all(logged <= r.keys() and r["sigma_kl"] >= 0 for r in metrics(tmp_path / "straight"))
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


def test_divergence_stops_at_the_step_it_is_seen_keeping_the_last_good_checkpoint(glyph_root, tmp_path):
    # At lr 1e9 the loss of the logged steps stays finite while BatchNorm's running variances overflow.
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"diverged by step 2: .*running_var.*the checkpoint of step 1 .* is kept"):
        run_train(out, "--max-steps", "6", "--lr", "1e9", "--warmup-steps", "0", "--ckpt-every", "1")
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 1
    load_backbone(out / "backbone.pt")  # finite, so it loads
    assert [r["step"] for r in metrics(out)] == [1]


def test_evaluate_refuses_a_backbone_that_is_not_finite(glyph_root, tmp_path):
    run_train(tmp_path / "run", "--max-steps", "1")
    payload = torch.load(tmp_path / "run" / "backbone.pt", weights_only=True)
    payload["state_dict"]["features.0.weight"][0, 0, 0, 0] = float("inf")
    torch.save(payload, tmp_path / "run" / "backbone.pt")
    result = subprocess.run([sys.executable, "-m", "gessl.evaluate", str(tmp_path / "run"), "--suite", "quick"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds weights that are not finite (features.0.weight)" in result.stderr


def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(glyph_root, tmp_path, monkeypatch):
    # 4000 KiB hold the first checkpoint (2.5 MB) and backbone (0.45 MB), not the second checkpoint's temporary.
    out = tmp_path / "disk" / "run"
    flags = TINY + ["--max-steps", "4", "--ckpt-every", "1", "--out", str(out)]
    with small_disk(tmp_path / "disk", 4000, monkeypatch) as real:
        if real:
            result = train_cli(*flags)
            assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
            error = result.stderr.strip().splitlines()[-1]
        else:
            with pytest.raises(UserError) as caught:
                train.main(flags)
            error = str(caught.value)
        assert "cannot write" in error and "No space left on device" in error
        assert "the checkpoint of step 1" in error and "--resume" in error
        assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 1
        load_backbone(out / "backbone.pt")
        assert sorted(p.name for p in out.iterdir()) == [".lock", "backbone.pt", "checkpoint.pt", "config.yaml",
                                                         "data.json", "metrics.jsonl"]  # no temporary left


def test_an_out_that_cannot_be_a_folder_is_one_line_and_exit_2(glyph_root, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    for out, message in [(tmp_path / "file", "a file of that name is in the way"),
                         (tmp_path / "file" / "run", "Not a directory"),
                         ("/proc/gessl-run", "cannot create the folder /proc/gessl-run")]:
        result = train_cli(*TINY, "--max-steps", "1", "--out", str(out))
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert message in result.stderr
    assert (tmp_path / "file").read_text() == "not a folder"
    with read_only_disk(tmp_path / "ro") as mounted:
        if mounted:
            result = train_cli(*TINY, "--max-steps", "1", "--out", str(tmp_path / "ro" / "run"))
            assert result.returncode == 2 and "Read-only file system" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_temporaries_of_a_killed_writer_are_removed_when_the_run_starts_again(glyph_root, tmp_path):
    out = tmp_path / "run"
    run_train(out, "--max-steps", "1")
    for name in (".checkpoint.pt.k2j4.tmp", ".backbone.pt.x1.tmp", ".config.yaml.q.tmp"):
        (out / name).write_bytes(b"half a file")
    (out / ".notes.txt.a.tmp").write_text("not training's")
    train.main(["--out", str(out), "--resume", "--max-steps", "2"])
    assert sorted(p.name for p in out.glob(".*.tmp")) == [".notes.txt.a.tmp"]


def test_options_that_do_not_act_are_named_once_and_left_out_of_config_yaml(glyph_root, tmp_path):
    out = tmp_path / "run"
    result = train_cli(*TINY, "--max-steps", "1", "--base", "barlow", "--proj-dim", "64", "--inner-lr", "0.5",
                 "--sync-bn", "--dsa-ema", "0.5", "--barlow-lambda", "0.01", "--out", str(out))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    for flag in ("--proj-dim (with --base barlow)", "--inner-lr (with --meta none)", "--dsa-ema (with --reg none)",
                 "--sync-bn (in one process"):
        assert flag in warnings[0]
    assert "--barlow-lambda" not in warnings[0]
    saved = (out / "config.yaml").read_text()
    for name in ("proj_dim", "inner_lr", "sync_bn", "dsa_ema", "dsa_prior", "temperature", "moco_queue"):
        assert f"\n{name}:" not in saved
    assert "barlow_lambda: 0.01" in saved and "barlow_proj_dim:" in saved and "lr: 0.002" in saved


@pytest.mark.parametrize("flags, message", [
    (["--base", "nope", "--out", "run"], "unknown --base 'nope'"),
    (["--epochs", "0", "--out", "run"], "--epochs must be positive"),
    (["--resume"], "--resume needs --out"),
    (["--resume", "--out", "run"], "not a run folder"),
    (["--reg", "dsa", "--dsa-prior", "nope.pt", "--out", "run"], "--dsa-prior 'nope.pt' is neither"),
    (["--dsa-ema", "1", "--out", "run"], "--dsa-ema must be in [0, 1)"),
])
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, flags, message):
    result = train_cli(*flags, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_to_overwrite_and_reports_corrupt_checkpoint(glyph_root, tmp_path):
    out = tmp_path / "run"
    run_train(out, "--max-steps", "1")
    before = (out / "metrics.jsonl").read_bytes()
    result = train_cli("--out", str(out), "--max-steps", "1")
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert (out / "metrics.jsonl").read_bytes() == before
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    result = train_cli("--out", str(out), "--resume")
    assert result.returncode == 2 and "corrupt" in result.stderr and "Traceback" not in result.stderr


def test_a_second_training_in_a_running_runs_folder_is_refused_and_a_killed_one_leaves_no_lock(glyph_root, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "gessl.train", *TINY, "--max-steps", "100000", "--out", str(out)],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (out / "metrics.jsonl").exists():  # it holds the folder and trains
            assert first.poll() is None
            time.sleep(0.05)
        second = train_cli(*TINY, "--max-steps", "2", "--out", str(out))
        assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert "is in use by another training" in second.stderr
    finally:
        first.kill()
        first.wait()
    assert first.returncode == -signal.SIGKILL
    run_train(out, "--max-steps", "2")  # the kernel dropped the dead process's lock; no checkpoint, so a fresh start
    assert [r["step"] for r in metrics(out)] == [1, 2]


def test_a_run_saved_before_the_ink_jitter_resumes_without_it(glyph_root, tmp_path):
    out = tmp_path / "old"
    run_train(out, "--max-steps", "1", "--data-root", str(glyph_root), "--aug-dilate", "0", "--aug-gain", "0")
    saved = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text("".join(line for line in saved.splitlines(keepends=True)
                                             if not line.startswith("aug_")))  # as written before the options
    cfg = train.prepare_run(train.parse_args(["--out", str(out), "--resume", "--max-steps", "2"]))[0]
    assert (cfg.aug_dilate, cfg.aug_gain) == (0, 0)
    assert (resolve_config({}).aug_dilate, resolve_config({}).aug_gain) == (0.5, 0.5)  # a new run has the jitter


def flat_layout(out):
    """Rewrite a run folder's config.yaml in the flat layout: the base method's options at the top level."""
    saved = yaml.safe_load((out / "config.yaml").read_text())
    own = saved.pop(saved["base"])
    (out / "config.yaml").write_text(yaml.safe_dump({**saved, **own}, sort_keys=False))


def test_a_swav_run_saved_when_swav_shared_temperature_reads_its_temperature(glyph_root, tmp_path):
    out = tmp_path / "old"
    run_train(out, "--max-steps", "1", "--data-root", str(glyph_root), "--base", "swav", "--swav-temperature", "0.3")
    flat_layout(out)
    saved = (out / "config.yaml").read_text().replace("swav_temperature: 0.3", "temperature: 0.3")
    (out / "config.yaml").write_text("".join(line for line in saved.splitlines(keepends=True)
                                             if not line.startswith(("simsiam_pred_lr", "aug_"))))
    cfg = train.prepare_run(train.parse_args(["--out", str(out), "--resume", "--max-steps", "2"]))[0]
    assert (cfg.base_options.swav_temperature, cfg.aug_dilate) == (0.3, 0)
    assert resolve_config({"base": "swav"}).base_options.swav_temperature == 0.2


def test_a_run_folder_of_the_flat_layout_resumes_and_is_saved_in_the_new_one(glyph_root, tmp_path):
    out = tmp_path / "old"
    run_train(out, "--max-steps", "1", "--data-root", str(glyph_root), "--base", "vicreg", "--vicreg-cov", "2")
    new_layout = yaml.safe_load((out / "config.yaml").read_text())
    assert new_layout["vicreg"] == {"proj_hidden": 512, "proj_dim": 128, "vicreg_sim": 25.0, "vicreg_var": 25.0,
                                    "vicreg_cov": 2.0}
    flat_layout(out)
    train.main(["--out", str(out), "--resume", "--max-steps", "2"])
    assert [r["step"] for r in metrics(out)] == [1, 2]
    assert yaml.safe_load((out / "config.yaml").read_text()) == {**new_layout, "max_steps": 2}


@pytest.mark.parametrize("flags, named", [(["--meta", "gessl"], "--meta ('none' -> 'gessl')"),
                                          (["--base", "moco"], "--base ('simclr' -> 'moco')"),
                                          (["--backbone", "resnet18"], "--backbone ('conv4' -> 'resnet18')"),
                                          (["--lr", "0.1", "--seed", "3"], "--lr (0.002 -> 0.1), --seed (0 -> 3)")])
def test_resume_refuses_flags_that_change_what_defines_the_run(glyph_root, tmp_path, flags, named):
    out = tmp_path / "run"
    run_train(out, "--max-steps", "1")
    saved = {name: (out / name).read_bytes() for name in ("config.yaml", "checkpoint.pt", "metrics.jsonl")}
    with pytest.raises(UserError, match=re.escape(f"--resume cannot change {named}: that defines the run")):
        train.main(["--out", str(out), "--resume", "--max-steps", "2", *flags])
    assert {name: (out / name).read_bytes() for name in saved} == saved


def test_resume_may_change_how_long_and_how_often_and_ignores_what_does_not_act(glyph_root, tmp_path):
    out = tmp_path / "run"
    run_train(out, "--max-steps", "1")
    train.main(["--out", str(out), "--resume", "--max-steps", "4", "--log-every", "2", "--ckpt-every", "3",
                "--inner-lr", "0.5", "--meta", "none"])  # --inner-lr does not act under --meta none
    assert [r["step"] for r in metrics(out)] == [1, 2, 4]
    assert "max_steps: 4" in (out / "config.yaml").read_text()


def test_a_fresh_start_after_a_kill_before_the_first_checkpoint_begins_clean_files(glyph_root, tmp_path):
    out = tmp_path / "run"
    run_train(out, "--max-steps", "2")
    (out / "checkpoint.pt").unlink()  # what a kill before the first checkpoint leaves: config and log only
    (out / "backbone.pt").unlink()
    with pytest.raises(UserError, match="has no checkpoint: the run stopped before its first; start it again"):
        train.main(["--out", str(out), "--resume"])
    run_train(out, "--max-steps", "3")
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]


def test_a_start_that_fails_leaves_no_folder_behind(glyph_root, tmp_path):
    with pytest.raises(UserError, match="larger than the .* training images"):
        run_train(tmp_path / "run", "--max-steps", "1", "--batch-size", "1000000")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, message", [("max_steps: 4.7\n", "max_steps must be a whole number, got 4.7"),
                                           ("lr: .inf\n", "--lr must be a finite number, got inf"),
                                           ("batch_size: true\n", "batch_size must be a whole number, got True")])
def test_config_values_that_would_be_changed_silently_are_refused(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    result = train_cli("--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--lr=inf", "--lr=nan", "--inner-lr=inf", "--temperature=-inf", "--gamma=nan"])
def test_flags_that_are_not_finite_are_refused(tmp_path, flag):
    result = train_cli(flag, "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "must be a finite number" in result.stderr, result.stderr


def wait_for(proc, text, timeout=300):
    """Read ``proc``'s stderr until ``text`` appears in it; what was read."""
    seen, deadline = "", time.monotonic() + timeout
    while text not in seen and time.monotonic() < deadline:
        chunk = os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
        if not chunk:
            break
        seen += chunk
    return seen


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_glyph_generation_is_one_line(tmp_path, sig):
    # An empty data folder: the glyphs are drawn by a pool of forked workers when the signal comes.
    proc = subprocess.Popen([sys.executable, "-m", "gessl.train", *TINY, "--max-steps", "1", "--out",
                             str(tmp_path / "run"), "--data-root", str(tmp_path / "data")], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = wait_for(proc, "glyphs: fonts")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    err = seen + err.decode()
    lines = [line for line in re.split(r"[\r\n]|(?=error:)", err) if line.strip() and not line.startswith("glyphs:")]
    assert proc.returncode == 2 and "Traceback" not in err and len(lines) == 1, err[-3000:]
    assert f"stopped by {sig.name}" in lines[0] and not (tmp_path / "run").exists()


def test_a_signal_during_the_closing_check_is_one_line(glyph_root, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "gessl.train", *TINY, "--eval-episodes", "100000",
                             "--max-steps", "1", "--out", str(tmp_path / "run")], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = wait_for(proc, "evaluate (quick)")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = (seen + err.decode()).replace("\r", "\n")
    assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert "stopped by SIGINT" in err.strip().splitlines()[-1]
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 1  # training is saved


def test_the_training_data_are_recorded_and_a_resume_on_other_data_is_refused(glyph_root, tmp_path):
    out = tmp_path / "run"
    run_train(out, "--max-steps", "1")
    record = json.loads((out / "data.json").read_text())
    assert record == torch.load(out / "checkpoint.pt", weights_only=True)["data"]
    assert record["dataset"] == "glyphs" and len(record["fingerprint"]) == 16 and record["classes"] == 1228
    assert {name for name, _ in record["fonts"]} >= {"DejaVuSans.ttf", "STIXGeneral.ttf"}
    assert all(len(digest) == 64 for _, digest in record["fonts"])
    # Another data folder whose cached glyph set (same fonts, same name) holds other drawings.
    other = tmp_path / "other"
    other.mkdir()
    for cached in glyph_root.glob("glyphs-*.npz"):
        with np.load(cached) as z:
            arrays = dict(z)
        arrays["images"] = 255 - arrays["images"]
        np.savez(other / cached.name, **arrays)
    with pytest.raises(UserError, match=f"differ from the run's .*{record['fingerprint']}"):
        train.main(["--out", str(out), "--resume", "--max-steps", "2", "--data-root", str(other)])



OUTSIDE_METHOD = '''
from dataclasses import dataclass

import torch
from torch import nn

from baselines.base import SSLOutput
from baselines.options import option, positive
from baselines.simclr import nt_xent


class Outside(nn.Module):
    @dataclass
    class Options:
        outside_dim: int = option(16, "width of the projections", positive)

    def __init__(self, feat_dim, outside_dim{extra}):
        super().__init__()
        self.projector, self.proj_dim = nn.Linear(feat_dim, outside_dim), outside_dim

    def forward(self, backbone, batch):
        z1, z2 = self.projector(backbone(torch.cat(batch["views"]))).chunk(2)
        loss = nt_xent(z1, z2, 0.5)
        return SSLOutput(loss, {{"outside": loss}}, (z1, z2))
'''


def outside_cli(folder, *flags):
    """``gessl.train`` run from ``folder``, which holds a method module, the project on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(folder)])}
    return subprocess.run([sys.executable, "-m", "gessl.train", *flags], cwd=folder, env=env, capture_output=True,
                          text=True)


@pytest.mark.parametrize("meta, reg, flags", [("none", "none", []), ("gessl", "dsa", []),
                                              ("gessl", "none", ["--inner-params", "head"])])
def test_a_method_from_a_module_outside_the_project_trains(glyph_root, tmp_path, monkeypatch, meta, reg, flags):
    (tmp_path / "mine.py").write_text(OUTSIDE_METHOD.format(extra=""))
    result = outside_cli(tmp_path, "--base", "mine:Outside", "--outside-dim", "8", "--meta", meta, "--reg", reg, *flags,
                         "--batch-size", "32", "--max-steps", "4", "--log-every", "1", "--warmup-steps", "1",
                         "--eval-episodes", "0", "--data-root", str(glyph_root), "--out", "run")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["mine:Outside"] == {"outside_dim": 8}
    records = metrics(tmp_path / "run")
    assert all(math.isfinite(r["loss"]) for r in records) and "outside" in records[0]
    monkeypatch.syspath_prepend(str(tmp_path))
    initial = train.build_model(read_run_config(tmp_path / "run"), 1, 10).state_dict()  # the run's seeded start
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert trained.keys() == initial.keys()
    for part in ("backbone.", "method.projector."):
        assert any(not torch.equal(v, trained[k]) for k, v in initial.items() if k.startswith(part)), part


@pytest.mark.parametrize("base, extra, message", [
    ("nowhere:Outside", "", "--base nowhere:Outside: cannot import nowhere (ModuleNotFoundError"),
    ("mine:Elsewhere", "", "--base mine:Elsewhere: module mine has no class Elsewhere"),
    ("mine:Outside", ", width=3", "--base mine:Outside: its constructor takes width, which is no option"),
])
def test_a_bad_outside_method_is_one_line_exit_2_and_writes_nothing(glyph_root, tmp_path, base, extra, message):
    (tmp_path / "mine.py").write_text(OUTSIDE_METHOD.format(extra=extra))
    result = outside_cli(tmp_path, "--base", base, "--max-steps", "1", "--eval-episodes", "0", "--out", "run")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()
