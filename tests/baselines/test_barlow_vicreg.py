"""Barlow Twins and VICReg against loop references written from the papers, collapse checks, and
every base method inside GeSSL on both engines."""
import copy
import inspect
import math

import pytest
import torch

from baselines import BASE_METHODS
from baselines.barlow import barlow_twins_loss
from baselines.vicreg import vicreg_loss
from gessl.bilevel import GeSSL
from gessl.inner_loop import trainable
from gessl.train import SSLModel

SMALL_SIZES = {"proj_hidden": 10, "proj_dim": 6, "barlow_proj_dim": 6, "swav_prototypes": 5, "music_hidden": 10,
               "music_dim": 8, "music_segment": 4, "moco_queue": 20, "byol_pred_hidden": 5,
               "simsiam_pred_hidden": 3,
               "num_classes": 4}  # passed to the methods whose constructors take them, with the backbone


def reference_barlow(z1, z2, lam, eps=1e-5):
    n, d = z1.shape
    def standardise(z):
        cols = []
        for j in range(d):
            col = [float(z[i, j]) for i in range(n)]
            mean = sum(col) / n
            std = math.sqrt(sum((x - mean) ** 2 for x in col) / n)
            cols.append([(x - mean) / (std + eps) for x in col])
        return cols  # [d][n]
    a, b = standardise(z1), standardise(z2)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[i][k] * b[j][k] for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lam * c ** 2
    return total


def reference_vicreg(z1, z2, lam, mu, nu):
    n, d = z1.shape
    inv = sum(float((z1[k, j] - z2[k, j]) ** 2) for k in range(n) for j in range(d)) / (n * d)
    def var_cov(z):
        means = [sum(float(z[k, j]) for k in range(n)) / n for j in range(d)]
        cov = [[sum((float(z[k, i]) - means[i]) * (float(z[k, j]) - means[j]) for k in range(n)) / (n - 1)
                for j in range(d)] for i in range(d)]
        v = sum(max(0.0, 1 - math.sqrt(cov[j][j] + 1e-4)) for j in range(d)) / d
        c = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return v, c
    (v1, c1), (v2, c2) = var_cov(z1), var_cov(z2)
    return lam * inv + mu * (v1 + v2) + nu * (c1 + c2)


@pytest.mark.parametrize("n, d", [(6, 4), (9, 7)])
def test_losses_match_the_loop_references(n, d):
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    assert barlow_twins_loss(z1, z2, 0.3)[0].item() == pytest.approx(reference_barlow(z1, z2, 0.3), rel=1e-9)
    got = vicreg_loss(0.5 * z1, z2, 2.0, 3.0, 0.7)[0].item()  # 0.5·z1 has variance under 1: the hinge is active
    assert got == pytest.approx(reference_vicreg(0.5 * z1, z2, 2.0, 3.0, 0.7), rel=1e-9)


def test_collapsed_embeddings_score_worse_than_aligned_spread_ones():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(256, 8, generator=g)
    aligned = (z, z + 0.05 * torch.randn(z.shape, generator=g))
    collapsed = (torch.ones(256, 8), torch.ones(256, 8))
    assert barlow_twins_loss(*aligned)[0] < 0.5 < barlow_twins_loss(*collapsed)[0]  # collapse: C = 0, L = D
    assert barlow_twins_loss(*collapsed)[0].item() == pytest.approx(8.0)
    assert vicreg_loss(*aligned)[0] < 1.0 < vicreg_loss(*collapsed)[0]  # collapse: variance hinge ≈ 1 per view


@pytest.mark.parametrize("name", sorted(n for n, m in BASE_METHODS.items()
                                         if not getattr(m, "meta_learner", False)))  # MAML: --meta none only
def test_every_base_method_trains_inside_gessl_with_the_same_gradient_on_both_engines(name):
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 12), torch.nn.BatchNorm1d(12),
                                   torch.nn.ReLU())
    accepted = inspect.signature(BASE_METHODS[name]).parameters
    sizes = {k: v for k, v in {**SMALL_SIZES, "backbone": backbone}.items() if k in accepted}
    model = SSLModel(backbone, BASE_METHODS[name](12, **sizes)).double().train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 1, 4, 4, generator=g, dtype=torch.float64)
    batch = {"images": x, "views": [x + 0.2 * torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(2)],
             "labels": torch.arange(16) % 4}  # for the label-using references: 2 images a class in each set
    grads, states = {}, {}
    for engine in ("higher", "func"):
        m = copy.deepcopy(model)
        GeSSL(inner_lr=0.05, inner_backend=engine).compute_gradients(m, batch)
        grads[engine] = {n: p.grad for n, p in trainable(m).items()}
        states[engine] = m.state_dict()
    first = "method.projector.0.weight" if "method.projector.0.weight" in grads["func"] else "backbone.1.weight"
    assert grads["func"][first].abs().sum() > 0
    for n in grads["func"]:
        torch.testing.assert_close(grads["higher"][n], grads["func"][n], rtol=1e-9, atol=1e-12)
    for n in states["func"]:  # buffers (BatchNorm statistics, queues) left alike by both engines
        torch.testing.assert_close(states["higher"][n], states["func"][n], rtol=1e-9, atol=1e-12)
