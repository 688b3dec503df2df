"""NT-Xent against a plain per-anchor loop written from the paper's equation 1."""
import math

import torch

from baselines.simclr import SimCLR, nt_xent


def reference_nt_xent(z1, z2, tau):
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denom = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / tau) / denom)
    return total / n2


def test_nt_xent_matches_reference_formula():
    g = torch.Generator().manual_seed(0)
    for n, d, tau in [(4, 8, 0.5), (7, 3, 0.1), (16, 32, 1.0)]:
        z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
        assert abs(nt_xent(z1, z2, tau).item() - reference_nt_xent(z1, z2, tau)) < 1e-5


def test_aligned_views_score_better_than_collapse_and_random():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(32, 16, generator=g)
    aligned = nt_xent(z, z + 0.01 * torch.randn(32, 16, generator=g), 0.5)
    collapsed = nt_xent(torch.ones(32, 16), torch.ones(32, 16), 0.5)
    unrelated = nt_xent(z, torch.randn(32, 16, generator=g), 0.5)
    assert aligned < unrelated and aligned < collapsed
    # a collapsed embedding scores log(2N - 1): every other vector is equally likely
    assert abs(collapsed.item() - math.log(63)) < 1e-5


def test_simclr_forward_gives_gradient_to_backbone_and_projector():
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8))
    method = SimCLR(8, proj_hidden=16, proj_dim=4, temperature=0.5)
    x = torch.randn(6, 1, 4, 4)
    out = method(backbone, {"views": [x, x + 0.1 * torch.randn_like(x)]})
    out.loss.backward()
    assert set(out.terms) == {"nt_xent"} and [z.shape for z in out.projections] == [(6, 4), (6, 4)]
    assert out.loss == nt_xent(*out.projections, 0.5)
    assert backbone[1].weight.grad.abs().sum() > 0
    assert method.projector[0].weight.grad.abs().sum() > 0
