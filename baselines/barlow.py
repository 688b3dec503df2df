"""Barlow Twins (Zbontar et al., ICML 2021, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction"): make the cross-correlation matrix of the two views' projections the identity.

With z¹, z² ([N, D]) standardised over the batch per feature, ẑ = (z − mean) / √(Var + ε) with the
biased variance and ε = 1e-5::

    C = ẑ¹ᵀ ẑ² / N
    L = Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²

(eq. 1–2 of the paper; λ = 0.005 there). The standardisation is the authors' (facebookresearch/
barlowtwins ``main.py`` normalises with ``BatchNorm1d(affine=False)``, which puts ε under the square
root); ε added to the standard deviation instead would part from it near collapse, where a
feature's variance nears ε. The method needs a wide projector: the paper's is 3
layers of 8192 (2048 at CIFAR scale in solo-learn); here it is ``barlow_proj_dim`` wide (1024 by
default) for both layers: a SimCLR-sized 512 → 128 projector learns far less on the glyphs
(``docs/bases.md``, 'Barlow Twins' projector and the supervised reference's head').
"""
from dataclasses import dataclass

import torch

from baselines.base import SSLOutput, project_views
from baselines.distributed import gather
from baselines.options import non_negative, option, positive
from baselines.simclr import projection_mlp


def barlow_twins_loss(z1, z2, off_diagonal_weight=0.005, eps=1e-5):
    """L of the module docstring over the batch gathered from every process."""
    z1, z2 = gather(z1), gather(z2)
    n = z1.shape[0]
    a = (z1 - z1.mean(0)) / (z1.var(0, unbiased=False) + eps).sqrt()
    b = (z2 - z2.mean(0)) / (z2.var(0, unbiased=False) + eps).sqrt()
    c = a.T @ b / n
    on = (1 - c.diagonal()).square().sum()
    off = c.square().sum() - c.diagonal().square().sum()
    return on + off_diagonal_weight * off, on, off


class BarlowTwins(torch.nn.Module):
    """Barlow Twins head and loss; ``forward(backbone, batch)`` returns an ``SSLOutput``."""

    @dataclass
    class Options:
        """BarlowTwins's options (``baselines.options``)."""

        barlow_proj_dim: int = option(1024, "width of both projector layers", positive)
        barlow_lambda: float = option(0.005, "weight of the off-diagonal term", non_negative)

    def __init__(self, feat_dim, barlow_proj_dim=1024, barlow_lambda=0.005):
        super().__init__()
        self.projector = projection_mlp(feat_dim, barlow_proj_dim, barlow_proj_dim)
        self.proj_dim = barlow_proj_dim
        self.off_diagonal_weight = barlow_lambda

    def forward(self, backbone, batch):
        z1, z2 = project_views(backbone, self.projector, batch)
        loss, on, off = barlow_twins_loss(z1, z2, self.off_diagonal_weight)
        return SSLOutput(loss, {"barlow_on_diagonal": on, "barlow_off_diagonal": off}, (z1, z2))
