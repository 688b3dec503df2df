"""SimCLR (Chen et al., ICML 2020, "A Simple Framework for Contrastive Learning of Visual
Representations"): an MLP projector and the NT-Xent loss over two augmented views.

NT-Xent, for N images with projections z¹, z² (2N vectors ẑ = z/‖z‖, temperature τ)::

    ℓ(i, j) = −log  exp(ẑ_i·ẑ_j / τ) / Σ_{k ≠ i} exp(ẑ_i·ẑ_k / τ)
    L = (1 / 2N) Σ_{n=1..N} [ℓ(n, n+N) + ℓ(n+N, n)]

(eq. 1 of the paper), i.e. a cross-entropy over the 2N − 1 other vectors whose target is the
other view of the same image.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import SSLOutput, project_views
from baselines.distributed import gather
from baselines.options import Projector, option, positive


def nt_xent(z1, z2, temperature=0.5):
    """NT-Xent loss of two views ``z1``, ``z2`` ([N, D]) at ``temperature`` (see module docstring),
    over the batch gathered from every process."""
    z = F.normalize(torch.cat([gather(z1), gather(z2)]), dim=1)
    n = len(z) // 2
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n, device=z.device), torch.arange(0, n, device=z.device)])
    return F.cross_entropy(sim, targets)


def projection_mlp(in_dim, hidden_dim, out_dim, output_bn=False):
    """SimCLR's projector: Linear → BatchNorm → ReLU → Linear, then with ``output_bn`` a BatchNorm of
    the output (SimSiam's projector, and BYOL's with ``--byol-proj-bn``)."""
    layers = [nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
              nn.Linear(hidden_dim, out_dim)]
    return nn.Sequential(*layers, *([nn.BatchNorm1d(out_dim)] if output_bn else []))


class SimCLR(nn.Module):
    """SimCLR head and loss. ``forward(backbone, batch)`` returns an ``SSLOutput``.

    Defaults for 28×28 glyphs: projector 512 → 128, τ = 0.1 (the paper's CIFAR-10 setting uses a
    2048-d hidden layer, 128-d output and τ = 0.5; τ = 0.1 is a [choice] for short runs on the
    glyphs, ``docs/bases.md``).
    """

    @dataclass
    class Options(Projector):
        """SimCLR's options (``baselines.options``)."""

        temperature: float = option(0.1, "tau, temperature of the NT-Xent loss", positive)

    def __init__(self, feat_dim, proj_hidden=512, proj_dim=128, temperature=0.1):
        super().__init__()
        self.projector = projection_mlp(feat_dim, proj_hidden, proj_dim)
        self.proj_dim = proj_dim
        self.temperature = temperature

    def forward(self, backbone, batch):
        z1, z2 = project_views(backbone, self.projector, batch)
        loss = nt_xent(z1, z2, self.temperature)
        return SSLOutput(loss, {"nt_xent": loss}, (z1, z2))
