"""MUSIC against a loop reference written from docs/music.md, its global minimum
−3 log B on a constructed optimum, collapse at 0, redundancy between segments, gradients to both
views, and the joint distribution over the global batch across ranks."""
import itertools
import math

import pytest
import torch
from torch import nn

import baselines.music
from baselines.music import MUSIC, music_loss
from gessl.config import resolve_config
from tasks.common.errors import UserError
from tests.baselines.emulated_world import run_as_ranks

CLAMP_TOLERANCE = 1e-4  # one-hot attributes are 1e-8 off their ideal values (the clamp); it moves L by ~1e-6


def reference_music(z1, z2, segment, w_ti=1.0, w_dia=1.0, w_off=1.0):
    """The spec's L with loops: softmax per segment, clamp, invariance, joint blocks, entropies."""
    n, d = len(z1), len(z1[0])
    k = d // segment

    def attributes(z):  # p[n][k][b]
        p = []
        for row in z:
            segs = []
            for s in range(k):
                e = [math.exp(v) for v in row[s * segment:(s + 1) * segment]]
                segs.append([max(x / sum(e), 1e-8) for x in e])
            p.append(segs)
        return p

    p1, p2 = attributes(z1), attributes(z2)
    ti = -sum(math.log(sum(p1[i][s][b] * p2[i][s][b] for b in range(segment)))
              for i in range(n) for s in range(k)) / (n * k)

    def joint(s, t, b, c):  # P^{st}_{bc}
        return sum(p1[i][s][b] * p2[i][t][c] for i in range(n)) / n

    def plogp(x):
        return x * math.log(x)

    dia = sum(plogp(joint(s, s, b, b)) for s in range(k) for b in range(segment)) / k
    off = sum(plogp(joint(s, t, b, c)) for s in range(k) for t in range(k) if s != t
              for b in range(segment) for c in range(segment)) / (k * (k - 1))
    return w_ti * ti + w_dia * dia + w_off * off, ti, dia, off


def one_hot_logits(attributes, segment, scale=60.0):
    """Logits whose softmax puts (all but 1e-8 of) segment s on attribute ``attributes[n][s]``."""
    z = torch.zeros(len(attributes), len(attributes[0]) * segment, dtype=torch.float64)
    for n, row in enumerate(attributes):
        for s, b in enumerate(row):
            z[n, s * segment + b] = scale
    return z


@pytest.mark.parametrize("n, k, b, weights", [(5, 2, 3, (1.0, 1.0, 1.0)), (7, 3, 4, (0.7, 1.3, 2.0))])
def test_loss_and_terms_match_the_loop_reference(n, k, b, weights):
    g = torch.Generator().manual_seed(n)
    z1, z2 = (2 * torch.randn(n, k * b, generator=g, dtype=torch.float64) for _ in range(2))
    z1[0, :b] = torch.tensor([40.0] + [0.0] * (b - 1))  # a near one-hot segment: the clamp is active
    got = [t.item() for t in music_loss(z1, z2, b, weights)]
    want = reference_music(z1.tolist(), z2.tolist(), b, *weights)
    assert got == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("k, b", [(3, 3), (2, 4)])
def test_independent_uniform_one_hot_attributes_reach_the_global_minimum(k, b):
    # every tuple of attributes once: each segment uniform, every pair independent, both views equal
    codes = list(itertools.product(range(b), repeat=k))
    z = one_hot_logits(codes, b)
    loss, ti, dia, off = music_loss(z, z.clone(), b)
    assert ti.item() == pytest.approx(0.0, abs=CLAMP_TOLERANCE)
    assert dia.item() == pytest.approx(-math.log(b), abs=CLAMP_TOLERANCE)
    assert off.item() == pytest.approx(-2 * math.log(b), abs=CLAMP_TOLERANCE)
    assert loss.item() == pytest.approx(-3 * math.log(b), abs=CLAMP_TOLERANCE)
    g = torch.Generator().manual_seed(0)  # nothing random comes below the minimum
    for scale in (0.1, 1.0, 10.0):
        z1 = scale * torch.randn(len(codes), k * b, generator=g, dtype=torch.float64)
        z2 = z1 + 0.1 * torch.randn(z1.shape, generator=g, dtype=torch.float64)
        assert music_loss(z1, z2, b)[0] > -3 * math.log(b) + 0.05


def test_descent_on_free_logits_approaches_but_never_passes_the_minimum():
    g = torch.Generator().manual_seed(1)
    k, b = 2, 4
    z1 = torch.randn(64, k * b, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(64, k * b, generator=g, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.Adam([z1, z2], lr=0.2)
    start = music_loss(z1, z2, b)[0].item()
    for _ in range(100):
        optimiser.zero_grad()
        loss = music_loss(z1, z2, b)[0]
        assert loss.item() > -3 * math.log(b) - CLAMP_TOLERANCE
        loss.backward()
        optimiser.step()
    assert start > -2.1 and loss.item() < -3 * math.log(b) + 0.1  # from -2.04 to within 0.1 of -4.16


def test_full_collapse_scores_zero_and_uniform_collapse_scores_minus_one_plus_two_over_b_log_b():
    k, b = 4, 8
    collapsed = one_hot_logits([[2] * k] * 32, b)  # every image on attribute 2 of every segment
    assert music_loss(collapsed, collapsed.clone(), b)[0].item() == pytest.approx(0.0, abs=CLAMP_TOLERANCE)
    uniform = torch.zeros(32, k * b, dtype=torch.float64)  # every attribute equally likely everywhere
    assert music_loss(uniform, uniform, b)[0].item() == pytest.approx(-(1 + 2 / b) * math.log(b), rel=1e-12)
    codes = list(itertools.product(range(b), repeat=2))  # 64 images, segments (0, 1) independent
    spread = one_hot_logits([[u, v, (u + v) % b, (u + 3 * v) % b] for u, v in codes], b)
    assert music_loss(spread, spread.clone(), b)[0] < -2.5 * math.log(b)


def test_redundant_segments_pay_in_the_off_diagonal_term():
    b = 4
    codes = list(itertools.product(range(b), repeat=2))
    independent = one_hot_logits(codes, b)
    copied = one_hot_logits([[u, u] for u, _ in codes], b)  # segment 2 repeats segment 1
    _, _, dia, off = music_loss(independent, independent.clone(), b)
    _, _, copied_dia, copied_off = music_loss(copied, copied.clone(), b)
    assert off.item() == pytest.approx(-2 * math.log(b), abs=CLAMP_TOLERANCE)
    assert copied_off.item() == pytest.approx(-math.log(b), abs=CLAMP_TOLERANCE)  # joint on B cells, not B²
    assert copied_dia.item() == pytest.approx(dia.item(), abs=CLAMP_TOLERANCE)  # the diagonal term cannot tell


def test_forward_uses_the_projector_and_sends_gradient_to_both_views():
    method = MUSIC(6, music_hidden=10, music_dim=8, music_segment=4, music_ti=0.5, music_dia=2.0).double()
    assert method.proj_dim == 8 and method.projector[-1].bias is None
    g = torch.Generator().manual_seed(2)
    x1, x2 = (torch.randn(9, 6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    out = method(nn.Identity(), {"views": [x1, x2]})
    assert set(out.terms) == {"music_invariance", "music_diagonal", "music_off_diagonal"}
    z1, z2 = out.projections
    assert out.loss.item() == pytest.approx(reference_music(z1.tolist(), z2.tolist(), 4, 0.5, 2.0, 1.0)[0], rel=1e-9)
    out.loss.backward()
    assert x1.grad.abs().sum() > 0 and x2.grad.abs().sum() > 0  # no stop-gradient on either view


def test_segments_must_divide_the_projection_in_at_least_two():
    for dim, segment in [(30, 4), (4, 4)]:
        with pytest.raises(ValueError, match="two segments"):
            MUSIC(6, music_dim=dim, music_segment=segment)
        with pytest.raises(UserError, match="music-segment"):
            resolve_config({"base": "music", "music_dim": dim, "music_segment": segment})
    resolve_config({"base": "simclr", "music_dim": 30, "music_segment": 4})  # only MUSIC cares


def test_the_joint_distribution_spans_every_rank_and_the_invariance_stays_local(monkeypatch):
    g = torch.Generator().manual_seed(3)
    z1, z2 = (torch.randn(10, 12, generator=g, dtype=torch.float64) for _ in range(2))
    whole = music_loss(z1, z2, 4)
    local = [music_loss(z1.chunk(2)[rank], z2.chunk(2)[rank], 4) for rank in range(2)]
    assert abs(local[0][2] - whole[2]) > 1e-3  # a per-process joint distribution would differ
    per_rank = run_as_ranks(monkeypatch, baselines.music,
                            lambda rank: music_loss(z1.chunk(2)[rank], z2.chunk(2)[rank], 4), 2)
    for rank, (_, ti, dia, off) in enumerate(per_rank):
        assert dia.item() == pytest.approx(whole[2].item(), rel=1e-12)
        assert off.item() == pytest.approx(whole[3].item(), rel=1e-12)
        assert ti.item() == pytest.approx(local[rank][1].item(), rel=1e-12)
