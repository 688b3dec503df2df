"""Training on several processes and the GPU-path options, on CPU.

Two gloo processes started by torchrun take the step of one process on the combined batch (plain
SimCLR with ``--sync-bn``: the same gradients; SimCLR + DSA inside GeSSL: the same weights), only rank 0 writes, and ``--resume`` works
under two processes. ``--amp`` and ``--channels-last`` run on CPU and change the loss only by
rounding; their defaults on CPU change nothing.
"""

import math

import pytest
import torch
from torch import nn

from gessl import train
from gessl.config import resolve_config
from gessl.device import Placement
from gessl.distributed import Processes
from gessl.sync_bn import SyncBatchNorm, convert_sync_batchnorm
from tasks.common.errors import UserError
from tests.helpers import metrics
from tests.gessl.torchrun import torchrun

TINY = ["--batch-size", "16", "--log-every", "1", "--eval-episodes", "0", "--warmup-steps", "2"]


def train_two(*flags):
    """``torchrun --nproc_per_node 2 -m gessl.train`` with ``TINY`` and ``flags``."""
    return torchrun("gessl.train", *TINY, *flags)


def run_train(out, *flags):
    train.main(TINY + ["--out", str(out), *flags])


def parameters(out):
    state = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    return {k: v for k, v in state.items() if v.is_floating_point() and "running_" not in k}


def first_moments(out):
    """Adam's first moment of every parameter after the run's first step, (1 − β₁)·g: the gradient of
    that step (weight decay included) before Adam turns it into a step of size lr."""
    state = torch.load(out / "checkpoint.pt", weights_only=True)["optimizer"]["state"]
    return [state[i]["exp_avg"] for i in sorted(state)]


def test_two_processes_with_sync_bn_take_the_step_of_one_process_on_the_whole_batch_and_resume(glyph_root, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    started = train_two("--meta", "none", "--sync-bn", "--max-steps", "1", "--out", str(two))
    run_train(one, "--meta", "none", "--max-steps", "1")  # plain BatchNorm over the whole batch
    # The first step's gradients agree to float32 rounding of sums taken in another order: 1.1e-4 of
    # their norm measured, 1e-3 allowed, and no entry further than 1e-2 of the largest from its
    # match (1.4e-3 measured). Every layer but the first agrees to 3e-6; the first convolution's
    # weights (8e-4) and BatchNorm (4e-3) carry more, because a convolution before a BatchNorm
    # gets an output gradient of mean zero, so its weight gradient sums products that cancel, the
    # more so with the ink jitter's dimmed and thickened strokes (3e-6 everywhere with it off);
    # the biases before a BatchNorm have zero gradients in exact arithmetic and rounding noise
    # here. Adam's later steps of size lr turn that noise into weights apart, so only this step is
    # compared; without --sync-bn the gradients are 61 % of their norm apart.
    got, want = torch.cat([g.flatten() for g in first_moments(two)]), torch.cat([g.flatten() for g in first_moments(one)])
    assert ((got - want).norm() / want.norm()).item() < 1e-3
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-2
    assert metrics(two)[0]["loss"] == pytest.approx(metrics(one)[0]["loss"], rel=1e-6)
    resumed = train_two("--resume", "--max-steps", "3", "--out", str(two))
    for result in (started, resumed):
        assert result.stdout.count("trained") == 1  # rank 0 alone reports, logs and writes
    assert sorted(p.name for p in two.iterdir()) == [".lock", "backbone.pt", "checkpoint.pt", "config.yaml",
                                                     "data.json", "metrics.jsonl"]
    assert [r["step"] for r in metrics(two)] == [1, 2, 3]


def test_two_processes_run_gessl_like_one_process_running_all_their_tasks(glyph_root, tmp_path):
    # Each process adapts to one task of its half of the batch; DSA's adjuster is trained too. The
    # pixel prior has no BatchNorm statistics, which under GeSSL follow each process's own tasks.
    flags = ["--meta", "gessl", "--reg", "dsa", "--dsa-prior", "pixels", "--tasks-per-step", "2", "--max-steps", "3"]
    train_two(*flags, "--out", str(tmp_path / "two"))
    run_train(tmp_path / "one", *flags)
    for got, want in zip(metrics(tmp_path / "two"), metrics(tmp_path / "one"), strict=True):
        for key in ["loss", "sigma_kl", "query_loss", "inner_loss_0", "dsa_loss", "grad_norm_sigma_kl"]:
            assert got[key] == pytest.approx(want[key], rel=1e-5), key
    two, one = parameters(tmp_path / "two"), parameters(tmp_path / "one")
    assert any(k.startswith("regulariser.adjuster.") for k in one)
    for k in one:
        torch.testing.assert_close(two[k], one[k], msg=k)


def test_gessl_under_two_processes_runs_with_the_default_tasks_one_per_process(glyph_root, tmp_path):
    train_two("--max-steps", "2", "--out", str(tmp_path / "two"))  # --meta gessl, --tasks-per-step 0
    run_train(tmp_path / "one", "--max-steps", "2", "--tasks-per-step", "2")
    for got, want in zip(metrics(tmp_path / "two"), metrics(tmp_path / "one"), strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


@pytest.mark.parametrize("environment, flags, message", [
    ({"WORLD_SIZE": "2"}, ["--batch-size", "15"], "cannot be shared equally by 2 processes"),
    ({"WORLD_SIZE": "2"}, ["--meta", "gessl", "--tasks-per-step", "3"], "must be a multiple of 2"),
    ({"WORLD_SIZE": "2"}, ["--meta", "gessl", "--batch-size", "12", "--tasks-per-step", "4"], "into 4 tasks of 3"),
    ({"WORLD_SIZE": "2"}, ["--base", "protonet", "--meta", "none"], "not shared between processes"),
    ({"WORLD_SIZE": "two"}, [], "must be integers"),
    ({}, ["--meta", "gessl", "--sync-bn"], "--sync-bn needs --meta none"),
    ({}, ["--meta", "gessl", "--compile"], "--compile needs --meta none"),
    ({}, ["--meta", "gessl", "--amp", "fp16"], "--amp fp16 needs --meta none"),
    ({}, ["--amp", "fp8"], "--amp must be auto, bf16, fp16 or off"),
    ({}, ["--channels-last", "yes"], "--channels-last must be auto, on or off"),
])
def test_runs_that_cannot_be_shared_or_placed_are_user_errors_before_anything_is_written(
        glyph_root, tmp_path, monkeypatch, environment, flags, message):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=message):
        run_train(tmp_path / "run", "--meta", "none", *flags)
    assert not (tmp_path / "run").exists()


def test_cpu_defaults_leave_the_step_as_it_was():
    placement = Placement.from_config(resolve_config({}), torch.device("cpu"))
    assert placement == Placement(torch.device("cpu"), channels_last=False, amp=None)
    assert Processes.from_environment() == Processes(rank=0, world=1, local_rank=0)
    x = torch.ones(2, 1, 3, 3)
    assert placement.put(x) is x and placement.layout(x) is x


@pytest.mark.parametrize("meta, flags, key, rel", [("gessl", ["--amp", "bf16"], "inner_loss_0", 5e-3),
                                                   ("none", ["--amp", "fp16"], "loss", 1e-3),
                                                   ("none", ["--channels-last", "on"], "loss", 1e-5)])
def test_amp_and_channels_last_change_the_loss_by_rounding_only(glyph_root, tmp_path, meta, flags, key, rel):
    # The loss of the first step, before Adam turns rounding differences into different weights.
    # GeSSL's is compared before its inner step (4e-4 apart measured): its outer loss is taken
    # after a step along a bf16 gradient, which on CPU is 15-22 % of its norm away from the fp32
    # one (measured on plain SimCLR's first step, batch 16), so that loss moves by as much (4.22
    # against 5.12).
    run_train(tmp_path / "fp32", "--meta", meta, "--max-steps", "1")
    run_train(tmp_path / "run", "--meta", meta, "--max-steps", "1", *flags)
    (got,), (want,) = metrics(tmp_path / "run"), metrics(tmp_path / "fp32")
    assert got[key] == pytest.approx(want[key], rel=rel)
    assert math.isfinite(got["loss"])
    if "--amp" in flags:
        assert abs(got[key] / want[key] - 1) > 1e-5  # autocast did run in lower precision
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ("scaler" in state) == ("fp16" in flags)  # fp16's gradient scale resumes with the run


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 4), nn.BatchNorm1d(4))


def test_sync_batchnorm_shares_the_parameters_and_is_batchnorm_in_one_process():
    net, plain = tiny_net(), tiny_net()
    keys, weight = list(net.state_dict()), net[1].weight
    synced = convert_sync_batchnorm(net)
    assert [type(m) for m in synced.modules()].count(SyncBatchNorm) == 2 and synced[1].weight is weight
    assert list(synced.state_dict()) == keys
    x = torch.randn(6, 1, 4, 4)
    torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(synced[4].running_var, plain[4].running_var)
