"""A base method defined in its own file, with its own options: Wang & Isola's alignment and
uniformity loss (ICML 2020, "Understanding Contrastive Representation Learning through Alignment and
Uniformity on the Hypersphere"), on unit-norm projections z¹, z² of the two views:

    L = E_i ‖z¹_i − z²_i‖² + w · (U(z¹) + U(z²)) / 2,   U(z) = log E_{i≠j} exp(−t ‖z_i − z_j‖²)

Train it inside GeSSL (its options are flags, saved under its name in the run's config.yaml):

    python -m gessl.train --base examples.my_method:MyMethod --meta gessl --my-weight 2

docs/bases.md ("Adding a base method") gives the contract this file follows.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import SSLOutput
from baselines.options import option, positive


def align_uniform_loss(z1, z2, t, weight):
    """L of the module docstring and its two terms (alignment, uniformity)."""
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    align = (z1 - z2).square().sum(1).mean()

    def uniformity(z):  # ‖z_i − z_j‖² = 2 − 2 z_i·z_j on the unit sphere
        n, off = len(z), ~torch.eye(len(z), dtype=torch.bool, device=z.device)
        return torch.logsumexp((-t * (2 - 2 * z @ z.T))[off], 0) - math.log(n * (n - 1))

    uniform = (uniformity(z1) + uniformity(z2)) / 2
    return align + weight * uniform, align, uniform


class MyMethod(nn.Module):
    """A projector and the alignment + uniformity loss; ``forward(backbone, batch)`` -> ``SSLOutput``."""

    @dataclass
    class Options:
        my_dim: int = option(64, "width of the projections", positive)
        my_t: float = option(2.0, "t, the scale of the uniformity term's distances", positive)
        my_weight: float = option(1.0, "w, the weight of the uniformity term", positive)

    def __init__(self, feat_dim, my_dim=64, my_t=2.0, my_weight=1.0):
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(feat_dim, 256), nn.ReLU(), nn.Linear(256, my_dim))
        self.proj_dim, self.t, self.weight = my_dim, my_t, my_weight  # proj_dim: the projections' width

    def forward(self, backbone, batch):
        z1, z2 = self.projector(backbone(torch.cat(batch["views"]))).chunk(2)
        loss, align, uniform = align_uniform_loss(z1, z2, self.t, self.weight)
        return SSLOutput(loss, {"align": align, "uniform": uniform}, (z1, z2))
