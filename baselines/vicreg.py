"""VICReg (Bardes, Ponce, LeCun, ICLR 2022, "VICReg: Variance-Invariance-Covariance Regularization
for Self-Supervised Learning"): invariance between views, variance kept up per feature, features
decorrelated.

For projections Z, Z' ([N, D])::

    s(Z, Z') = (1/N) Σ_n ‖z_n − z'_n‖² / D                       (mean squared error)
    v(Z)     = (1/D) Σ_j max(0, γ − √(Var(z_·j) + ε))             (γ = 1, ε = 1e-4, Var with 1/(N − 1))
    c(Z)     = (1/D) Σ_{i≠j} Cov(Z)_ij²                           (Cov with 1/(N − 1))
    L = λ s(Z, Z') + μ [v(Z) + v(Z')] / 2 + ν [c(Z) + c(Z')]

(eq. 1–6 of the paper; λ = μ = 25, ν = 1 there). The variance term is the mean of the two views'
hinges, as in the authors' code (``main_vicreg.py`` of facebookresearch/vicreg, which the published
25/25/1 were tuned with); the paper's eq. 6 sums them, which doubles μ. The covariance terms are
summed, as in both. The paper's projector is 3 layers of 8192; for the 28×28 glyphs the default is
the SimCLR-sized projector of the config.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from baselines.base import SSLOutput, project_views
from baselines.distributed import gather
from baselines.options import Projector, non_negative, option
from baselines.simclr import projection_mlp


def _variance(z, gamma=1.0, eps=1e-4):
    return F.relu(gamma - torch.sqrt(z.var(0) + eps)).mean()


def _covariance(z):
    n, d = z.shape
    z = z - z.mean(0)
    cov = z.T @ z / (n - 1)
    return (cov.square().sum() - cov.diagonal().square().sum()) / d


def vicreg_loss(z1, z2, sim_weight=25.0, var_weight=25.0, cov_weight=1.0):
    """L of the module docstring and its three terms (invariance, variance, covariance), over the
    batch gathered from every process."""
    z1, z2 = gather(z1), gather(z2)
    inv = F.mse_loss(z1, z2)
    var = (_variance(z1) + _variance(z2)) / 2
    cov = _covariance(z1) + _covariance(z2)
    return sim_weight * inv + var_weight * var + cov_weight * cov, inv, var, cov


class VICReg(torch.nn.Module):
    """VICReg head and loss; ``forward(backbone, batch)`` returns an ``SSLOutput``."""

    @dataclass
    class Options(Projector):
        """VICReg's options (``baselines.options``)."""

        vicreg_sim: float = option(25.0, "weight of the invariance term", non_negative)
        vicreg_var: float = option(25.0, "weight of the variance term", non_negative)
        vicreg_cov: float = option(1.0, "weight of the covariance term", non_negative)

    def __init__(self, feat_dim, proj_hidden=512, proj_dim=128, vicreg_sim=25.0, vicreg_var=25.0, vicreg_cov=1.0):
        super().__init__()
        self.projector = projection_mlp(feat_dim, proj_hidden, proj_dim)
        self.proj_dim = proj_dim
        self.weights = (vicreg_sim, vicreg_var, vicreg_cov)

    def forward(self, backbone, batch):
        z1, z2 = project_views(backbone, self.projector, batch)
        loss, inv, var, cov = vicreg_loss(z1, z2, *self.weights)
        return SSLOutput(loss, {"vicreg_invariance": inv, "vicreg_variance": var, "vicreg_covariance": cov},
                         (z1, z2))
