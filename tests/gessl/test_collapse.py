"""Collapse diagnostics against numpy formulas, on a constant encoder and on spread outputs, and as
training logs them (every logged step) and warns of them (once)."""
import math

import numpy as np
import pytest
import torch

from gessl import train
from gessl.backbones import build_backbone
from gessl.collapse import collapse_metrics, collapsing
from tests.helpers import metrics


def test_spread_outputs_against_the_formulas():
    z = torch.randn(256, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    metrics = {k: float(v) for k, v in collapse_metrics(z).items()}
    x = z.numpy()
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert metrics["std_ratio"] == pytest.approx(unit.std(0, ddof=1).mean() * math.sqrt(32), rel=1e-5)
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    p = s / s.sum()
    assert metrics["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-5)
    assert metrics["std_ratio"] > 0.9 and metrics["effective_rank"] > 25 and collapsing(metrics) == []


def test_a_constant_encoder_is_collapsing():
    z = torch.ones(64, 16) * torch.arange(16.0)  # every image gives the same output
    metrics = {k: float(v) for k, v in collapse_metrics(z).items()}
    assert metrics["std_ratio"] == pytest.approx(0.0, abs=1e-6) and metrics["effective_rank"] == 0.0
    assert collapsing(metrics) == ["std_ratio", "effective_rank"]


def test_a_rank_one_batch_has_effective_rank_one():
    z = torch.randn(64, 1, generator=torch.Generator().manual_seed(1)) * torch.randn(1, 16)
    assert float(collapse_metrics(z)["effective_rank"]) == pytest.approx(1.0, abs=1e-4)


def test_codes_one_prototype_taking_everything_against_uniform_use():
    k = 8
    one = torch.zeros(40, k)
    one[:, 3] = 1
    metrics = {n: float(v) for n, v in collapse_metrics(torch.randn(40, 4), one).items()}
    assert metrics["code_entropy"] == pytest.approx(0.0, abs=1e-6) and metrics["prototype_usage"] == 1 / k
    assert "code_entropy" in collapsing(metrics)
    spread = torch.eye(k).repeat(5, 1)  # each prototype the code of 5 samples
    metrics = {n: float(v) for n, v in collapse_metrics(torch.randn(40, 4), spread).items()}
    assert metrics["code_entropy"] == pytest.approx(1.0) and metrics["prototype_usage"] == 1.0


def constant_backbone(name, in_channels=1, image_size=28):
    """conv4 with every convolution zeroed: each image gives the same features (a collapsed encoder)."""
    net = build_backbone(name, in_channels, image_size)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
    return net


TINY = ["--batch-size", "32", "--log-every", "1", "--eval-episodes", "0", "--warmup-steps", "2", "--max-steps", "2"]


@pytest.mark.parametrize("meta", ["none", "gessl"])
def test_training_logs_the_diagnostics_and_warns_once_on_a_collapsed_encoder(glyph_root, tmp_path, monkeypatch,
                                                                             capsys, meta):
    monkeypatch.setattr(train, "build_backbone", constant_backbone)
    train.main([*TINY, "--meta", meta, "--out", str(tmp_path / "collapsed")])
    first = metrics(tmp_path / "collapsed")[0]
    assert first["std_ratio"] < 1e-3 and first["effective_rank"] < 1e-3
    assert capsys.readouterr().err.count("the projections look collapsed") == 1
    monkeypatch.undo()
    train.main([*TINY, "--meta", meta, "--out", str(tmp_path / "healthy")])
    assert all(r["std_ratio"] > 0.1 and r["effective_rank"] > 2 for r in metrics(tmp_path / "healthy"))
    assert "collapsed" not in capsys.readouterr().err


def test_swav_logs_its_code_entropy_and_prototype_usage(glyph_root, tmp_path):
    train.main([*TINY, "--meta", "none", "--base", "swav", "--out", str(tmp_path / "swav")])
    for record in metrics(tmp_path / "swav"):
        assert 0 <= record["code_entropy"] <= 1 and 0 < record["prototype_usage"] <= 1


def test_non_finite_projections_give_nan_diagnostics_not_an_error():
    z = torch.randn(16, 8)
    z[3, 2] = float("nan")
    metrics = {k: float(v) for k, v in collapse_metrics(z, torch.softmax(torch.randn(16, 4), 1)).items()}
    assert all(math.isnan(v) for v in metrics.values()) and collapsing(metrics) == []
