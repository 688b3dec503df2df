"""SwAV against loop references written from the paper (Sinkhorn-Knopp of App. A.1, the swapped
prediction of eq. 1-2), its marginals, collapse, unit prototypes, codes without gradient, the
queue's order and use, GeSSL with a queue, and codes over the global batch across ranks."""
import copy
import math

import pytest
import torch
from torch import nn

import baselines.swav
from baselines.swav import SwAV, sinkhorn
from gessl.bilevel import GeSSL
from gessl.inner_loop import trainable
from gessl.train import SSLModel
from tests.baselines.emulated_world import run_as_ranks


def reference_sinkhorn(scores, eps, iterations):
    """Sinkhorn-Knopp on a list of rows (samples) of scores, with explicit loops."""
    n, k = len(scores), len(scores[0])
    q = [[math.exp(s / eps) for s in row] for row in scores]
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for j in range(k):  # every prototype gets mass 1/K
            col = sum(q[i][j] for i in range(n))
            for i in range(n):
                q[i][j] /= col * k
        for i in range(n):  # every sample gets mass 1/N
            row = sum(q[i])
            q[i] = [v / (row * n) for v in q[i]]
    return [[v * n for v in row] for row in q]


def reference_swav(z1, z2, weight, eps, iterations, tau, queues=None):
    """The SwAV loss with loops: normalise, score, codes (queue rows appended), swapped cross-entropy."""
    def unit(rows):
        return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in rows]
    protos = unit(weight.tolist())
    views = [unit(z1.tolist()), unit(z2.tolist())]
    scores = [[[sum(a * b for a, b in zip(z, c)) for c in protos] for z in view] for view in views]
    codes = []
    for v in range(2):
        extra = [] if queues is None else [[sum(a * b for a, b in zip(z, c)) for c in protos] for z in queues[v]]
        codes.append(reference_sinkhorn(scores[v] + extra, eps, iterations)[:len(z1)])
    total = 0.0
    for t, s in ((0, 1), (1, 0)):  # predict view s's code from view t
        for n in range(len(z1)):
            logits = [x / tau for x in scores[t][n]]
            log_norm = math.log(sum(math.exp(x) for x in logits))
            total -= sum(q * (x - log_norm) for q, x in zip(codes[s][n], logits))
    return total / (2 * len(z1))


def identity_swav(dim, prototypes, **options):
    """SwAV whose projector is the identity, so the views are the projections."""
    method = SwAV(dim, proj_hidden=4, proj_dim=dim, swav_prototypes=prototypes, **options).double()
    method.projector = nn.Identity()
    return method


def forward(method, z1, z2):
    return method(nn.Identity(), {"views": [z1, z2]})


@pytest.mark.parametrize("n, k, iterations", [(5, 3, 3), (4, 7, 3), (6, 4, 1), (8, 5, 10)])
def test_sinkhorn_matches_the_loop_reference(n, k, iterations):
    g = torch.Generator().manual_seed(n * k)
    scores = 2 * torch.rand(n, k, generator=g, dtype=torch.float64) - 1  # cosines
    expected = torch.tensor(reference_sinkhorn(scores.tolist(), 0.05, iterations), dtype=torch.float64)
    torch.testing.assert_close(sinkhorn(scores, 0.05, iterations), expected, rtol=1e-10, atol=1e-12)


def test_codes_have_the_marginals_of_an_equipartition():
    g = torch.Generator().manual_seed(3)
    n, k = 12, 4
    scores = 2 * torch.rand(n, k, generator=g, dtype=torch.float64) - 1
    start = torch.softmax(scores / 0.05, dim=1)  # the codes before any rescaling
    for iterations in (3, 1000):
        q = sinkhorn(scores, 0.05, iterations)
        torch.testing.assert_close(q.sum(1), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-12)
        gap = (q.sum(0) - n / k).abs().max()
        assert gap < (start.sum(0) - n / k).abs().max() / 2  # prototype sums move towards N/K
    assert gap < 1e-6  # and reach it when the iterations converge


def test_loss_matches_the_loop_reference_with_unnormalised_inputs():
    g = torch.Generator().manual_seed(0)
    n, d, k = 6, 5, 4
    method = identity_swav(d, k, swav_temperature=0.3)
    with torch.no_grad():
        method.prototypes.weight.mul_(torch.rand(k, 1, generator=g, dtype=torch.float64) * 3 + 0.5)  # not unit
    z1, z2 = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(2))
    got = forward(method, z1, z2)
    want = reference_swav(z1, z2, method.prototypes.weight.detach(), method.epsilon, 3, 0.3)
    assert got.loss.item() == pytest.approx(want, rel=1e-9)
    assert set(got.terms) == {"swav_swapped_prediction"}
    torch.testing.assert_close(got.projections[0].norm(dim=1), torch.ones(n, dtype=torch.float64))


def test_collapse_gets_uniform_codes_and_scores_worse_than_clustered_views():
    g = torch.Generator().manual_seed(1)
    k, d = 8, 16
    method = identity_swav(d, k)
    protos = nn.functional.normalize(method.prototypes.weight.detach(), dim=1)
    centres = protos.repeat(8, 1)  # 64 images, 8 per prototype
    clustered = [centres + 0.05 * torch.randn(centres.shape, generator=g, dtype=torch.float64) for _ in range(2)]
    collapsed = torch.ones(64, d, dtype=torch.float64)
    # identical rows: the equipartition spreads every image uniformly over the prototypes
    torch.testing.assert_close(sinkhorn(collapsed @ protos.T), torch.full((64, k), 1 / k, dtype=torch.float64))
    collapsed_loss = forward(method, collapsed, collapsed).loss
    assert collapsed_loss >= math.log(k) - 1e-9  # cross-entropy against uniform codes is at least log K
    assert forward(method, *clustered).loss < 0.5 * math.log(k)


def test_no_gradient_flows_through_the_codes():
    g = torch.Generator().manual_seed(2)
    n, d, k = 6, 5, 4
    method = identity_swav(d, k)
    z1, z2 = (torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    grad = torch.autograd.grad(forward(method, z1, z2).loss, [z1, z2])

    def torch_swav(detach_codes):  # the loss in plain torch, codes differentiable unless detached
        protos = nn.functional.normalize(method.prototypes.weight, dim=1)
        u1, u2 = nn.functional.normalize(z1, dim=1), nn.functional.normalize(z2, dim=1)
        def codes(u):
            q = torch.exp(u @ protos.T / method.epsilon)
            q = q / q.sum()
            for _ in range(3):
                q = q / q.sum(0) / k
                q = q / q.sum(1, keepdim=True) / n
            return (q * n).detach() if detach_codes else q * n
        log_p1, log_p2 = (torch.log_softmax(u @ protos.T / method.temperature, 1) for u in (u1, u2))
        return -0.5 * ((codes(u2) * log_p1).sum(1).mean() + (codes(u1) * log_p2).sum(1).mean())

    detached = torch.autograd.grad(torch_swav(True), [z1, z2])
    through = torch.autograd.grad(torch_swav(False), [z1, z2])
    for got, want, other in zip(grad, detached, through):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
        assert (got - other).abs().max() > 1e-6  # the test can tell the two apart
    assert not sinkhorn(z1 @ z2.T).requires_grad


def test_prototypes_are_unit_vectors_in_forward_and_after_each_step():
    g = torch.Generator().manual_seed(4)
    method = identity_swav(5, 4)
    z1, z2 = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(2))
    before = forward(method, z1, z2).loss
    with torch.no_grad():
        method.prototypes.weight.mul_(torch.tensor([[0.3], [2.0], [5.0], [1.1]], dtype=torch.float64))
    assert forward(method, z1, z2).loss.item() == pytest.approx(before.item(), rel=1e-12)  # scale-free
    direction = nn.functional.normalize(method.prototypes.weight.detach(), dim=1)
    method.after_step(None, 0.5)
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(method.prototypes.weight.detach(), direction)


def test_queue_fills_newest_first_and_joins_the_codes_only_when_full():
    g = torch.Generator().manual_seed(5)
    n, d, k, size = 4, 5, 3, 6
    method = identity_swav(d, k, swav_queue=size)
    plain = identity_swav(d, k)
    plain.prototypes.load_state_dict(method.prototypes.state_dict())
    batches = [[torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(2)] for _ in range(3)]
    unit = [[nn.functional.normalize(z, dim=1) for z in b] for b in batches]
    weight = method.prototypes.weight.detach()

    # batch 0: queue empty, so the codes are those without a queue; then batch 0 is stored
    assert forward(method, *batches[0]).loss.item() == pytest.approx(forward(plain, *batches[0]).loss.item(), rel=1e-12)
    assert int(method.queue_count) == n
    for v in range(2):
        torch.testing.assert_close(method.queue[v, :n], unit[0][v])
        assert method.queue[v, n:].abs().sum() == 0
    # batch 1: queue not yet full (4 of 6): still no queue in the codes
    assert forward(method, *batches[1]).loss.item() == pytest.approx(forward(plain, *batches[1]).loss.item(), rel=1e-12)
    assert int(method.queue_count) == size
    for v in range(2):
        torch.testing.assert_close(method.queue[v], torch.cat([unit[1][v], unit[0][v][:2]]))
    # batch 2: the full queue (as it was before this forward) joins the Sinkhorn problem
    queues = [method.queue[v].tolist() for v in range(2)]
    got = forward(method, *batches[2]).loss.item()
    assert got == pytest.approx(reference_swav(*batches[2], weight, method.epsilon, 3, 0.2, queues=queues), rel=1e-9)
    assert got != pytest.approx(forward(plain, *batches[2]).loss.item(), rel=1e-6)
    for v in range(2):
        torch.testing.assert_close(method.queue[v], torch.cat([unit[2][v], unit[1][v][:2]]))


def _gessl_model(queue):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU())
    return SSLModel(backbone, SwAV(12, proj_hidden=10, proj_dim=6, swav_prototypes=5, swav_queue=queue)).double()


def test_inside_gessl_only_the_outer_forward_fills_the_queue_and_both_engines_agree_with_it_full():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 1, 4, 4, generator=g, dtype=torch.float64)
    batch = {"images": x, "views": [x + 0.2 * torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(2)]}
    model = _gessl_model(queue=12).train()
    GeSSL(inner_lr=0.05, outer_set="query").compute_gradients(model, batch)  # support 8, query 8: the outer set
    assert int(model.method.queue_count) == 8 and model.method.queue[:, 8:].abs().sum() == 0
    with torch.no_grad():
        model(batch)  # fills the queue: from now on it joins the codes
    assert int(model.method.queue_count) == 12
    grads = {}
    for engine in ("higher", "func"):
        m = copy.deepcopy(model)
        GeSSL(inner_lr=0.05, inner_backend=engine, outer_set="query").compute_gradients(m, batch)
        grads[engine] = {n: p.grad for n, p in trainable(m).items()}
        torch.testing.assert_close(m.method.queue[:, 8:], model.method.queue[:, :4])  # shifted by the query only
    assert grads["func"]["method.prototypes.weight"].abs().sum() > 0
    for n in grads["func"]:
        torch.testing.assert_close(grads["higher"][n], grads["func"][n], rtol=1e-9, atol=1e-12)


def test_codes_over_two_ranks_are_those_of_the_whole_batch(monkeypatch):
    g = torch.Generator().manual_seed(7)
    scores = 2 * torch.rand(8, 5, generator=g, dtype=torch.float64) - 1
    whole = sinkhorn(scores, 0.05, 3)
    assert (whole[:4] - sinkhorn(scores[:4], 0.05, 3)).abs().max() > 1e-3  # a per-process Sinkhorn differs
    per_rank = run_as_ranks(monkeypatch, baselines.swav, lambda rank: sinkhorn(scores.chunk(2)[rank], 0.05, 3), 2)
    torch.testing.assert_close(torch.cat(per_rank), whole, rtol=1e-12, atol=1e-14)
