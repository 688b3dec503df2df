"""BYOL (Grill et al., NeurIPS 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning"): an online backbone + projector + predictor regresses the projection of the other view
made by a target network, an EMA copy of the online backbone + projector.

For the online prediction q and the target projection z' of the other view (eq. 2)::

    L(q, z') = ‖q̄ − z̄'‖² = 2 − 2 · q·z' / (‖q‖ ‖z'‖),     x̄ = x / ‖x‖

averaged over the batch and symmetrised, L_BYOL = L(q¹, z'²) + L(q², z'¹); no gradient reaches the
target. After every optimiser step the target ξ follows the online θ, ξ ← τ·ξ + (1 − τ)·θ, with τ
rising from τ_base to 1 over training (sec. 3.2)::

    τ = 1 − (1 − τ_base) · (cos(π · progress) + 1) / 2

Nothing in L penalises a collapsed (constant) output: a constant q = z' scores the minimum 0. BYOL
avoids collapse through the predictor and the slowly moving target, not through its formula.

Settings (paper, ImageNet: projector and predictor 4096 → 256 with BatchNorm in their hidden
layers, τ_base = 0.996). Glyph defaults, [choice]s of ours for short runs (``docs/bases.md``):
the SimCLR-sized projector of the config (512 → 128) followed by a BatchNorm on its output
(``byol_proj_bn``, SimSiam's projector), a 128 → 128 → 128 predictor (``byol_pred_hidden``) held at
a constant 10× learning rate (``byol_pred_lr``) and τ_base = 0.99 (``byol_momentum``, the paper
measures 0.99 and 0.996 alike). The paper's head and rate (no output BatchNorm, a 512-wide
predictor on the schedule, τ_base = 0.999) learn less in short runs (``docs/bases.md``, 'BYOL';
docs/results.md, 'Every base method alone'). Two reasons: without the output BatchNorm the
projections of different glyphs share a common direction at initialisation, which the prediction
matches for free; and in 150 steps a target that moves by
(1 − τ) per step stays close to its random start, so BYOL learns to predict a random network.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import SSLOutput
from baselines.momentum import MomentumEncoder
from baselines.options import Projector, half_open_unit, non_negative, option, positive
from baselines.simclr import projection_mlp


def normalised_mse(q, z):
    """Batch mean of ‖q̄ − z̄‖² = 2 − 2 cos(q, z) (module docstring)."""
    return (2 - 2 * F.cosine_similarity(q, z, dim=1)).mean()


def target_momentum(base, progress):
    """τ at ``progress`` ∈ [0, 1] of training: 1 − (1 − τ_base)(cos(π·progress) + 1)/2."""
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


class BYOL(nn.Module):
    """BYOL heads and target network; ``forward(backbone, batch)`` returns an ``SSLOutput``.

    ``backbone`` is the online backbone, copied into the target network at construction.
    """

    @dataclass
    class Options(Projector):
        """BYOL's options (``baselines.options``)."""

        byol_pred_hidden: int = option(128, "hidden width of the predictor (4096 in the paper)", positive)
        byol_momentum: float = option(0.99, "tau_base, target momentum at the start, raised to 1 by a cosine (0.996 "
                                            "in the paper)", half_open_unit)
        byol_pred_lr: float = option(10.0, "the predictor's learning rate, a multiple of --lr held constant (no "
                                           "warm-up or decay); 0: the schedule's, like every other parameter (the "
                                           "paper)", non_negative)
        byol_proj_bn: bool = option(True, "BatchNorm on the projector's output (SimSiam's projector; the paper has "
                                          "none)")

    def __init__(self, feat_dim, backbone, proj_hidden=512, proj_dim=128, byol_pred_hidden=128, byol_momentum=0.99,
                 byol_pred_lr=10.0, byol_proj_bn=True):
        super().__init__()
        self.constant_lr = {"predictor": byol_pred_lr}  # gessl.train.build_optimizer: a constant rate
        self.projector = projection_mlp(feat_dim, proj_hidden, proj_dim, output_bn=byol_proj_bn)
        self.predictor = projection_mlp(proj_dim, byol_pred_hidden, proj_dim)
        self.target = MomentumEncoder(backbone, self.projector)
        self.proj_dim = proj_dim
        self.base_momentum = byol_momentum

    def forward(self, backbone, batch):
        views = torch.cat(batch["views"])
        z = self.projector(backbone(views))
        q1, q2 = self.predictor(z).chunk(2)
        t1, t2 = self.target(views).chunk(2)
        loss = normalised_mse(q1, t2) + normalised_mse(q2, t1)
        return SSLOutput(loss, {"byol": loss}, tuple(z.chunk(2)))

    def after_step(self, backbone, progress):
        """Once per optimiser step: the target follows ``backbone`` and the projector at τ(progress)."""
        self.target.follow(backbone, self.projector, target_momentum(self.base_momentum, progress))
