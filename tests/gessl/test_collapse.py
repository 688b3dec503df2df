"""Collapse diagnostics against numpy formulas, on a constant encoder and on spread outputs."""
import math

import numpy as np
import pytest
import torch

from gessl.collapse import collapse_metrics, collapsing


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
