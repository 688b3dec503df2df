"""MoCo v2, BYOL and SimSiam: losses against plain references written from the papers, the queue's
order and wrap-around, the EMA updates and BYOL's cosine schedule, the stop-gradients, the queue
under GeSSL, and collapse (scored by MoCo's formula; resisted by BYOL and SimSiam only in training)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import baselines.simsiam
from baselines.byol import BYOL, normalised_mse, target_momentum
from baselines.moco import MoCo, info_nce
from baselines.simsiam import SimSiam, negative_cosine
from gessl.bilevel import GeSSL
from gessl.config import resolve_config
from gessl.inner_loop import trainable
from gessl.train import SSLModel, build_model
from tasks.common.errors import UserError


def small_backbone(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU())


def views(n, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g, dtype=dtype)
    return {"views": [x + 0.3 * torch.randn(x.shape, generator=g, dtype=dtype) for _ in range(2)]}


def build(cls, **options):
    """A float64 SSLModel of a small backbone and ``cls`` with small heads."""
    backbone = small_backbone()
    if cls in (MoCo, BYOL):
        options["backbone"] = backbone
    return SSLModel(backbone, cls(12, proj_hidden=10, proj_dim=6, **options)).double().train()


def momentum_copy(method):
    return method.key_encoder if isinstance(method, MoCo) else method.target


def unit(v):
    return v / math.sqrt(float(v @ v))


# ---- losses against references -------------------------------------------------------------------

def reference_info_nce(q, k, queue, tau):
    total = 0.0
    for qi, ki in zip(q, k):
        qi, ki = unit(qi), unit(ki)
        positive = math.exp(float(qi @ ki) / tau)
        negatives = sum(math.exp(float(qi @ kn) / tau) for kn in queue)
        total += -math.log(positive / (positive + negatives))
    return total / len(q)


def reference_byol(q, z):
    return sum(float(((unit(qi) - unit(zi)) ** 2).sum()) for qi, zi in zip(q, z)) / len(q)


def reference_simsiam(p, z):
    return sum(-float(unit(pi) @ unit(zi)) for pi, zi in zip(p, z)) / len(p)


@pytest.mark.parametrize("n, k, d, tau", [(4, 7, 3, 0.2), (9, 2, 5, 1.0)])
def test_losses_match_the_plain_references(n, k, d, tau):
    g = torch.Generator().manual_seed(n)
    q, key, z = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3))
    queue = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    assert info_nce(q, key, queue, tau).item() == pytest.approx(reference_info_nce(q, key, queue, tau), rel=1e-12)
    assert normalised_mse(q, z).item() == pytest.approx(reference_byol(q, z), rel=1e-12)
    assert negative_cosine(q, z).item() == pytest.approx(reference_simsiam(q, z), rel=1e-12)


def test_moco_loss_is_symmetric_infonce_against_the_queue_before_this_batch():
    model = build(MoCo, temperature=0.3, moco_queue=7)
    method, backbone = model.method, model.backbone
    with torch.no_grad():
        for p in method.key_encoder.parameters():  # keys differ from the queries
            p.add_(0.1 * torch.randn_like(p))
    batch, queue = views(5), method.queue.clone()
    x = torch.cat(batch["views"])
    with torch.no_grad():
        q1, q2 = method.projector(backbone(x)).chunk(2)
        k1, k2 = method.key_encoder.projector(method.key_encoder.backbone(x)).chunk(2)
    expected = (reference_info_nce(q1, k2, queue, 0.3) + reference_info_nce(q2, k1, queue, 0.3)) / 2
    assert model(batch).loss.item() == pytest.approx(expected, rel=1e-12)


def test_byol_and_simsiam_losses_are_symmetric_over_the_views():
    model = build(BYOL)
    with torch.no_grad():
        for p in model.method.target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch = views(6)
    x = torch.cat(batch["views"])
    with torch.no_grad():
        q1, q2 = model.method.predictor(model.method.projector(model.backbone(x))).chunk(2)
        t1, t2 = model.method.target.projector(model.method.target.backbone(x)).chunk(2)
    assert model(batch).loss.item() == pytest.approx(reference_byol(q1, t2) + reference_byol(q2, t1), rel=1e-12)

    model = build(SimSiam, simsiam_pred_hidden=3)
    with torch.no_grad():
        z1, z2 = model.method.projector(model.backbone(x)).chunk(2)
        p1, p2 = model.method.predictor(torch.cat([z1, z2])).chunk(2)
    expected = (reference_simsiam(p1, z2) + reference_simsiam(p2, z1)) / 2
    assert model(batch).loss.item() == pytest.approx(expected, rel=1e-12)


# ---- MoCo's queue ---------------------------------------------------------------------------------

def test_moco_enqueues_the_keys_of_both_views_in_order_and_wraps_around():
    model = build(MoCo, moco_queue=5)
    method, start = model.method, model.method.queue.clone()
    expected_queue = start.clone()
    batches = [views(2, seed=1), views(2, seed=2)]
    rows = [[0, 1, 2, 3], [4, 0, 1, 2]]  # 4 keys per batch (k¹ of both images, then k²) into 5 slots
    for batch, written in zip(batches, rows):
        with torch.no_grad():  # the key encoder is still the copy of the online networks
            keys = F.normalize(method.projector(model.backbone(torch.cat(batch["views"]))), dim=1)
        model(batch)
        for row, key in zip(written, keys):
            expected_queue[row] = key
        assert torch.equal(method.queue, expected_queue)
    assert method.queue_ptr.item() == 3
    assert torch.equal(method.queue[3], expected_queue[3]) and not torch.equal(method.queue[3], start[3])


def test_enqueueing_more_keys_than_slots_is_enqueueing_them_one_by_one():
    method = build(MoCo, moco_queue=5).method
    method.queue_ptr.fill_(3)
    keys = torch.randn(12, 6, dtype=torch.float64)
    expected, ptr = method.queue.clone(), 3
    for key in keys:
        expected[ptr], ptr = key, (ptr + 1) % 5
    method.enqueue(keys)
    assert torch.equal(method.queue, expected) and method.queue_ptr.item() == ptr


@pytest.mark.parametrize("engine", ["higher", "func"])
@pytest.mark.parametrize("outer_set", ["query", "task"])
def test_under_gessl_only_the_outer_forward_on_each_outer_set_enqueues(engine, outer_set):
    model = build(MoCo, moco_queue=50)
    reference, batch = copy.deepcopy(model), views(16)
    expected = model.method.queue.clone()
    row = 0
    for task in range(2):  # tasks of 8 images: support 4, query 4 (the last 4 of the task)
        first = 8 * task + (4 if outer_set == "query" else 0)
        outer = [v[first:8 * task + 8] for v in batch["views"]]
        keys = F.normalize(reference.method.key_encoder(torch.cat(outer)), dim=1)
        expected[row:row + len(keys)], row = keys, row + len(keys)
    GeSSL(inner_lr=0.05, inner_steps=2, lookahead=2, tasks_per_step=2, inner_backend=engine,
          outer_set=outer_set).compute_gradients(model, batch)
    torch.testing.assert_close(model.method.queue, expected, rtol=1e-12, atol=1e-14)
    assert model.method.queue_ptr.item() == row == (16 if outer_set == "query" else 32)
    for n, p in model.method.key_encoder.named_parameters():
        assert p.grad is None and torch.equal(p, reference.method.key_encoder.get_parameter(n))


# ---- EMA updates -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, options, progress, rate", [
    (MoCo, {"moco_momentum": 0.9}, 0.0, 0.9), (MoCo, {"moco_momentum": 0.9}, 1.0, 0.9),
    (BYOL, {"byol_momentum": 0.9}, 0.0, 0.9), (BYOL, {"byol_momentum": 0.9}, 0.5, 0.95),
    (BYOL, {"byol_momentum": 0.9}, 1.0, 1.0)])
def test_momentum_copy_follows_the_backbone_given_to_after_step(cls, options, progress, rate):
    model = build(cls, **options)
    method, ema = model.method, momentum_copy(model.method)
    other = copy.deepcopy(model.backbone)  # the backbone the hook is given, not the one copied at construction
    with torch.no_grad():
        for p in list(other.parameters()) + list(method.projector.parameters()):
            p.add_(torch.randn_like(p))
        method.projector(other(torch.randn(8, 1, 4, 4, dtype=torch.float64)))  # new running statistics
    online = {**{f"backbone.{n}": p for n, p in other.named_parameters()},
              **{f"projector.{n}": p for n, p in method.projector.named_parameters()}}
    online_buffers = {**{f"backbone.{n}": b for n, b in other.named_buffers()},
                      **{f"projector.{n}": b for n, b in method.projector.named_buffers()}}
    before = {n: p.clone() for n, p in ema.named_parameters()}
    method.after_step(other, progress)
    assert set(before) == set(online)
    for n, xi in ema.named_parameters():
        assert torch.equal(xi, rate * before[n] + (1 - rate) * online[n]), n
        assert not xi.requires_grad
    for n, b in ema.named_buffers():
        assert torch.equal(b, online_buffers[n]), n
    if progress == 1.0 and cls is BYOL:  # τ = 1 at the end: the target no longer moves
        assert all(torch.equal(xi, before[n]) for n, xi in ema.named_parameters())


@pytest.mark.parametrize("proj_bn", [False, True])
def test_byol_projector_batchnorm_standardises_online_and_target_projections(proj_bn):
    # With --byol-proj-bn each dimension of a batch's projections, online and target, has mean 0 and
    # variance 1 (BatchNorm's training-mode formula, biased variance, eps 1e-5); without it, not.
    model = build(BYOL, byol_proj_bn=proj_bn)
    x = torch.cat(views(8)["views"])
    for z in (model.method.projector(model.backbone(x)), model.method.target(x)):
        standard = z.mean(0).abs().max() < 1e-9 and (z.var(0, unbiased=False) - 1).abs().max() < 1e-3
        assert bool(standard) == proj_bn


def test_byol_rate_rises_from_its_base_to_one_along_a_cosine():
    assert [target_momentum(0.996, p) for p in (0.0, 0.5, 1.0)] == pytest.approx([0.996, 0.998, 1.0], abs=1e-15)
    assert target_momentum(0.9, 0.25) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2, abs=1e-15)


# ---- stop-gradients ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [MoCo, BYOL])
def test_no_gradient_reaches_the_momentum_copy(cls):
    model = build(cls)
    model(views(6)).loss.backward()
    ema = momentum_copy(model.method)
    assert all(not p.requires_grad and p.grad is None for p in ema.parameters())
    assert not any(n.startswith(("method.key_encoder.", "method.target.")) for n in trainable(model))
    assert model.backbone[1].weight.grad.abs().sum() > 0 and model.method.projector[0].weight.grad.abs().sum() > 0


def test_simsiam_gradient_through_the_stopped_branch_is_zero():
    method = build(SimSiam, simsiam_pred_hidden=3).method
    g = torch.Generator().manual_seed(3)
    z1, z2 = (torch.randn(6, 6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    p1, p2 = method.predictor(torch.cat([z1, z2])).chunk(2)
    loss = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
    got = torch.autograd.grad(loss, [z1, z2], retain_graph=True)
    # the same loss with the targets as constants: the gradient only flows through the predictor
    c1, c2 = z1.detach().clone(), z2.detach().clone()
    constant_targets = (-F.cosine_similarity(p1, c2).mean() - F.cosine_similarity(p2, c1).mean()) / 2
    expected = torch.autograd.grad(constant_targets, [z1, z2], retain_graph=True)
    without_stop = (-F.cosine_similarity(p1, z2).mean() - F.cosine_similarity(p2, z1).mean()) / 2
    through_both = torch.autograd.grad(without_stop, [z1, z2])
    for a, b, c in zip(got, expected, through_both):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        assert (c - a).abs().max() > 1e-3  # the stopped branch would have carried this much
    p = torch.randn(6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.grad(negative_cosine(p, z), [p, z], allow_unused=True)[1] is None


# ---- collapse ---------------------------------------------------------------------------------------

def test_moco_scores_collapsed_keys_worse_than_aligned_spread_ones():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(64, 16, generator=g)
    queue = F.normalize(torch.randn(256, 16, generator=g), dim=1)
    aligned = info_nce(q, q + 0.05 * torch.randn(q.shape, generator=g), queue, 0.2)
    constant = torch.ones(64, 16)
    collapsed = info_nce(constant, constant, F.normalize(torch.ones(256, 16), dim=1), 0.2)
    assert collapsed.item() == pytest.approx(math.log(257), rel=1e-6)  # every key equally likely
    assert aligned < 2.0 < collapsed


def test_byol_and_simsiam_formulas_do_not_penalise_collapse():
    """A constant output scores each loss's minimum: only training dynamics can avoid collapse."""
    constant = torch.ones(8, 4, dtype=torch.float64)
    assert normalised_mse(constant, constant).item() == pytest.approx(0.0, abs=1e-12)
    assert negative_cosine(constant, constant).item() == pytest.approx(-1.0, abs=1e-12)


def projection_spread(model, steps):
    """Train ``model`` with Adam on noisy copies of 64 random patterns; the per-feature std of its
    ℓ2-normalised projections times √D (about 1 when spread, 0 when collapsed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = model.float()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        g = torch.Generator().manual_seed(1)
        patterns = torch.randn(64, 1, 4, 4, generator=g)
        for step in range(steps):
            x = patterns[torch.randint(0, 64, (32,), generator=g)]
            batch = {"views": [x + 0.3 * torch.randn(x.shape, generator=g) for _ in range(2)]}
            optimizer.zero_grad()
            model(batch).loss.backward()
            optimizer.step()
            model.after_step((step + 1) / steps)
        with torch.no_grad():
            z = F.normalize(model(batch).projections[0], dim=1)
        return (z.std(0).mean() * math.sqrt(z.shape[1])).item()
    finally:
        torch.set_num_threads(threads)


class OnlineTarget:
    """BYOL's target replaced by the online networks themselves: no stop-gradient, no EMA."""

    def __init__(self, backbone, projector):
        self.backbone, self.projector = backbone, projector

    def __call__(self, x):
        return self.projector(self.backbone(x))

    def follow(self, backbone, projector, momentum):
        pass


def test_byol_training_keeps_projections_spread_and_collapses_without_its_stop_gradient():
    # The paper's projector, without the BatchNorm on its output (--no-byol-proj-bn), which would
    # keep the projections spread whatever the loss does.
    assert projection_spread(build(BYOL, byol_proj_bn=False), 100) > 0.7  # 0.88 here
    model = build(BYOL, byol_proj_bn=False)
    del model.method.target
    model.method.target = OnlineTarget(model.backbone, model.method.projector)
    assert projection_spread(model, 100) < 0.3  # 0.11 here


def test_simsiam_training_keeps_projections_spread_and_collapses_without_its_stop_gradient(monkeypatch):
    assert projection_spread(build(SimSiam, simsiam_pred_hidden=3), 200) > 0.85  # 0.94 here
    monkeypatch.setattr(baselines.simsiam, "negative_cosine", lambda p, z: -F.cosine_similarity(p, z).mean())
    assert projection_spread(build(SimSiam, simsiam_pred_hidden=3), 200) < 0.7  # 0.54 here


# ---- construction from the config ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["moco", "byol", "simsiam"])
def test_build_model_fills_the_new_fields_and_copies_the_backbone(name):
    cfg = resolve_config({"base": name, "moco_queue": 64, "byol_pred_hidden": 24, "simsiam_pred_hidden": 8})
    model, options = build_model(cfg, 1, 10), cfg.base_options
    method = model.method
    assert method.proj_dim == options.proj_dim
    if name == "moco":
        assert method.queue.shape == (64, options.proj_dim) and method.momentum == options.moco_momentum
        assert torch.allclose(method.queue.norm(dim=1), torch.ones(64))
    if name in ("moco", "byol"):
        copied = momentum_copy(method).backbone.state_dict()
        assert all(torch.equal(v, copied[k]) for k, v in model.backbone.state_dict().items())
    if name in ("byol", "simsiam"):
        assert method.predictor[0].out_features == getattr(options, f"{name}_pred_hidden")


@pytest.mark.parametrize("field", ["moco_momentum", "byol_momentum"])
def test_momenta_must_lie_in_zero_one(field):
    with pytest.raises(UserError, match=field.replace("_", "-")):
        resolve_config({"base": field.split("_")[0], field: 1.0})
    with pytest.raises(UserError, match="must be positive"):
        resolve_config({"base": "moco", "moco_queue": 0})
