"""GeSSL's outer step against a reference written here from the spec, finite differences and the
other engine, on a toy base method that has every kind of state (trained heads, a frozen EMA-like
copy, a queue buffer, BatchNorm)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from baselines.base import SSLOutput
from baselines.simclr import nt_xent
from gessl.bilevel import GeSSL, PlainStep
from gessl.inner_loop import ENGINES, lookahead, trainable
from gessl.train import SSLModel

ALPHA, TAU = 0.3, 0.5


class ToyMethod(nn.Module):
    """A base method the wrapper has never heard of: contrastive + EMA-target + queue terms."""

    def __init__(self, dim=6):
        super().__init__()
        self.projector = nn.Linear(dim, 4)
        self.ema = nn.Linear(dim, 4).requires_grad_(False)
        self.register_buffer("queue", torch.randn(5, 4))

    def forward(self, backbone, batch):
        v1, v2 = batch["views"]
        h1, h2 = backbone(v1), backbone(v2)
        z1, z2 = self.projector(h1), self.projector(h2)
        toward_ema = (z1 - self.ema(h2)).square().mean()
        against_queue = 0.01 * (z1 @ self.queue.T).square().mean()
        loss = nt_xent(z1, z2, 0.5) + toward_ema + against_queue
        return SSLOutput(loss, {"toward_ema": toward_ema}, (z1, z2))


def toy_model(seed=0):
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 6))
    return SSLModel(backbone, ToyMethod()).double().train()


def toy_batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64)
    return {"views": [x + 0.1 * torch.randn(x.shape, generator=g, dtype=x.dtype),
                      x + 0.1 * torch.randn(x.shape, generator=g, dtype=x.dtype)]}


def halves(batch):
    n = len(batch["views"][0]) // 2
    return ({"views": [v[:n] for v in batch["views"]]}, {"views": [v[n:] for v in batch["views"]]})


def reference_log_posteriors(z1, z2, tau):
    """Row i: log softmax over j of cos(anchor_i, other view_j) / tau, anchors from both views."""
    rows = []
    for anchors, others in ((z1, z2), (z2, z1)):
        for a in anchors:
            cos = torch.stack([F.cosine_similarity(a, o, dim=0) for o in others]) / tau
            rows.append(cos - torch.logsumexp(cos, 0))
    return torch.stack(rows)


def outer_images(batch, outer_set):
    """The set O the outer loss is measured on: the second half (query) or the whole batch (task)."""
    return halves(batch)[1] if outer_set == "query" else batch


def reference_outer(model, theta, target_log_p, batch, steps, sigma_weight=1.0, gamma=1.0, second_order=True,
                    outer_set="query"):
    """w_σ KL(p* ‖ p_θK) + γ L(θ_K; O), θ_K from plain SGD on the support, buffers held fixed."""
    support, _ = halves(batch)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    fast = {n: p if p.requires_grad else p.detach().requires_grad_() for n, p in theta.items()}
    for _ in range(steps):
        loss = functional_call(model, (fast, buffers), (support,)).loss
        grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second_order, allow_unused=True)
        fast = {n: p if g is None else p - ALPHA * g for (n, p), g in zip(fast.items(), grads)}
    out = functional_call(model, (fast, buffers), (outer_images(batch, outer_set),))
    log_p = reference_log_posteriors(*out.projections, TAU)
    sigma = (target_log_p.exp() * (target_log_p - log_p)).sum(1).mean()
    return sigma_weight * sigma + gamma * out.loss, sigma, fast


def reference_target(model, theta, batch, steps, look, outer_set="query"):
    """p* on O: the posteriors after `look` further plain SGD steps on the whole task."""
    _, _, fast = reference_outer(model, theta, torch.zeros(8, 4, dtype=torch.float64), batch, steps)
    target = {n: p.detach().requires_grad_() for n, p in fast.items()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    for _ in range(look):
        loss = functional_call(model, (target, buffers), (batch,)).loss
        grads = torch.autograd.grad(loss, list(target.values()), allow_unused=True)
        target = {n: (p if g is None else p - ALPHA * g).detach().requires_grad_() for (n, p), g in zip(target.items(), grads)}
    with torch.no_grad():
        out = functional_call(model, (target, buffers), (outer_images(batch, outer_set),))
        return reference_log_posteriors(*out.projections, TAU)


def gessl_grads(model, batch, **options):
    options.setdefault("sigma_weight", 1.0)  # as in reference_outer
    options.setdefault("outer_set", "query")  # as the references' default
    options.setdefault("inner_params", "all")  # the references adapt every parameter
    model.zero_grad(set_to_none=True)
    logs = GeSSL(inner_lr=ALPHA, sigma_temperature=TAU, **options).compute_gradients(model, batch, diagnose=True)
    return logs, {n: p.grad.clone() for n, p in trainable(model).items()}


@pytest.mark.parametrize("engine, steps, look, outer_set", [
    ("higher", 1, 1, "query"), ("higher", 2, 2, "query"), ("func", 1, 1, "query"), ("func", 2, 2, "query"),
    ("higher", 1, 1, "task"), ("func", 2, 2, "task")])
def test_meta_gradient_matches_finite_differences_with_the_target_held_fixed(engine, steps, look, outer_set):
    model, batch = toy_model(), toy_batch()
    logs, grads = gessl_grads(copy.deepcopy(model), batch, inner_steps=steps, lookahead=look, inner_backend=engine,
                              sigma_weight=2.0, outer_set=outer_set)
    theta = {n: p.detach() for n, p in trainable(model).items()}
    target_log_p = reference_target(model, theta, batch, steps, look, outer_set)
    loss, sigma, _ = reference_outer(model, theta, target_log_p, batch, steps, sigma_weight=2.0, outer_set=outer_set)
    assert logs["loss"] == pytest.approx(loss.item(), rel=1e-9)
    assert logs["sigma_kl"] == pytest.approx(sigma.item(), rel=1e-7)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        v = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in theta.items()}
        eps = 1e-6
        plus, minus = (reference_outer(model, {n: theta[n] + sign * eps * v[n] for n in theta}, target_log_p, batch,
                                       steps, 2.0, outer_set=outer_set)[0] for sign in (1, -1))
        numeric = (plus - minus).item() / (2 * eps)
        analytic = sum((grads[n] * v[n]).sum() for n in theta).item()
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("first_order", [False, True])
def test_engines_give_the_same_meta_gradient(first_order):
    model, batch = toy_model(), toy_batch()
    _, a = gessl_grads(copy.deepcopy(model), batch, inner_steps=2, inner_backend="higher", first_order=first_order)
    _, b = gessl_grads(copy.deepcopy(model), batch, inner_steps=2, inner_backend="func", first_order=first_order)
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("engine", ["higher", "func"])
def test_first_order_treats_the_inner_jacobian_as_identity(engine):
    model, batch = toy_model(), toy_batch()
    _, first = gessl_grads(copy.deepcopy(model), batch, inner_backend=engine, first_order=True)
    _, second = gessl_grads(copy.deepcopy(model), batch, inner_backend=engine)
    theta = {n: p.detach() for n, p in trainable(model).items()}
    target_log_p = reference_target(model, theta, batch, 1, 1)
    _, _, fast = reference_outer(model, theta, target_log_p, batch, 1, second_order=False)
    at_fast = {n: p.detach().requires_grad_() for n, p in fast.items()}
    loss = reference_outer(model, at_fast, target_log_p, batch, 0)[0]  # the outer loss as a function of θ_K
    expected = dict(zip(at_fast, torch.autograd.grad(loss, list(at_fast.values()), allow_unused=True)))
    for n in theta:
        torch.testing.assert_close(first[n], expected[n], rtol=1e-9, atol=1e-12)
    assert any(not torch.allclose(first[n], second[n], rtol=1e-4) for n in theta)


def test_sigma_is_non_negative_and_zero_without_lookahead():
    model, batch = toy_model(), toy_batch()
    logs, _ = gessl_grads(copy.deepcopy(model), batch, lookahead=2)
    assert logs["sigma_kl"] > 1e-8
    logs, grads = gessl_grads(copy.deepcopy(model), batch, lookahead=0)
    assert abs(logs["sigma_kl"]) < 1e-12 and logs["grad_norm_sigma_kl"] < 1e-10


def test_no_gradient_reaches_theta_through_the_target():
    model, batch = toy_model(), toy_batch()
    fast, _ = ENGINES["func"](model, trainable(model), halves(batch)[0], 1, ALPHA)
    target = lookahead(model, fast, batch, 2, ALPHA)
    assert all(not t.requires_grad and t.grad_fn is None for t in target.values())
    # With w_σ = 0 and γ = 0 the outer loss has nothing left, so θ must get an all-zero gradient.
    _, grads = gessl_grads(copy.deepcopy(model), batch, sigma_weight=0.0, gamma=0.0)
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())


@pytest.mark.parametrize("engine", ["higher", "func"])
def test_inner_loop_and_target_leave_buffers_and_frozen_parameters_alone(engine):
    model, batch = toy_model(), toy_batch()
    before = copy.deepcopy(model.state_dict())
    fast, _ = ENGINES[engine](model, trainable(model), halves(batch)[0], 3, ALPHA)
    lookahead(model, fast, batch, 2, ALPHA)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # A whole outer step: only the outer forward pass on the query (one per task) updates BatchNorm.
    probe = copy.deepcopy(model)
    probe(batch)
    per_forward = probe.backbone[2].num_batches_tracked.item()  # the toy method runs the backbone per view
    logs, grads = gessl_grads(model, batch, inner_steps=3, lookahead=2, inner_backend=engine, tasks_per_step=2)
    assert model.backbone[2].num_batches_tracked.item() == 2 * per_forward
    assert torch.equal(model.method.queue, before["method.queue"])
    assert model.method.ema.weight.grad is None and "method.ema.weight" not in grads


def test_plain_step_is_the_base_loss_gradient():
    model, batch = toy_model(), toy_batch()
    logs = PlainStep().compute_gradients(model, batch)
    reference = toy_model()
    expected = torch.autograd.grad(reference(batch).loss, list(trainable(reference).values()))
    for p, g in zip(trainable(model).values(), expected):
        torch.testing.assert_close(p.grad, g)
    assert set(logs) == {"loss", "toward_ema"}
