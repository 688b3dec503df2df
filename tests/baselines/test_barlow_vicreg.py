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
    """The authors' convention: each feature normalised as BatchNorm1d(affine=False) does in training,
    (x − mean) / √(biased variance + ε)."""
    n, d = z1.shape
    def standardise(z):
        cols = []
        for j in range(d):
            col = [float(z[i, j]) for i in range(n)]
            mean = sum(col) / n
            var = sum((x - mean) ** 2 for x in col) / n
            cols.append([(x - mean) / math.sqrt(var + eps) for x in col])
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
    return lam * inv + mu * (v1 + v2) / 2 + nu * (c1 + c2)  # the authors' code: the mean of the two hinges


@pytest.mark.parametrize("n, d", [(6, 4), (9, 7)])
def test_losses_match_the_loop_references(n, d):
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)
    assert barlow_twins_loss(z1, z2, 0.3)[0].item() == pytest.approx(reference_barlow(z1, z2, 0.3), rel=1e-9)
    got = vicreg_loss(0.5 * z1, z2, 2.0, 3.0, 0.7)[0].item()  # 0.5·z1 has variance under 1: the hinge is active
    assert got == pytest.approx(reference_vicreg(0.5 * z1, z2, 2.0, 3.0, 0.7), rel=1e-9)


def test_barlow_twins_near_collapse_follows_the_authors_epsilon():
    # A feature of standard deviation 1e-3 (variance 1e-6 < ε = 1e-5): √(var + ε) is 3.3e-3, std + ε
    # would be 1.01e-3, so the two conventions give different losses here.
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(32, 4, generator=g, dtype=torch.float64), torch.randn(32, 4, generator=g, dtype=torch.float64)
    z1[:, 0] = 1e-3 * z2[:, 0]
    assert barlow_twins_loss(z1, z2, 0.005)[0].item() == pytest.approx(reference_barlow(z1, z2, 0.005), rel=1e-9)


def sylvester_hadamard(n):
    h = torch.ones(1, 1, dtype=torch.float64)
    while len(h) < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)])
    return h


def test_ideal_and_collapsed_embeddings_score_their_exact_values():
    # Columns 1..8 of a 16 x 16 Hadamard matrix: features of mean 0, biased variance 1, uncorrelated.
    ideal = sylvester_hadamard(16)[:, 1:9]
    collapsed = torch.ones(16, 8, dtype=torch.float64)
    eps = 1e-5
    # Barlow Twins: identical ideal views give C = I / (1 + ε); collapse gives C = 0, so L = D.
    assert barlow_twins_loss(ideal, ideal)[0].item() == pytest.approx(8 * (eps / (1 + eps)) ** 2, abs=1e-15)
    assert barlow_twins_loss(collapsed, collapsed)[0].item() == 8.0
    # VICReg: the ideal views match, their unbiased variance 16/15 clears the hinge, no covariance: L = 0;
    # collapse has no variance: each view's hinge is 1 − √1e-4 = 0.99 per feature, and L = μ · 0.99.
    assert vicreg_loss(ideal, ideal)[0].item() == 0.0
    assert vicreg_loss(collapsed, collapsed)[0].item() == pytest.approx(25 * 0.99, rel=1e-12)


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
