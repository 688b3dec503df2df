"""SimSiam (Chen & He, CVPR 2021, "Exploring Simple Siamese Representation Learning"): a projector
and a predictor on one network; each view's prediction regresses the other view's projection,
which is held constant (stop-gradient).

With D(p, z) = −p·z / (‖p‖ ‖z‖) and stopgrad the identity without gradient (eq. 1–3)::

    L = ½ D(p¹, stopgrad(z²)) + ½ D(p², stopgrad(z¹))

averaged over the batch; its minimum is −1. Nothing in L penalises a collapsed (constant) output:
p = z = constant scores −1 too. The paper shows that the stop-gradient is what prevents collapse
(without it the loss reaches −1 at once and the outputs' std goes to 0, sec. 4.1).

Settings (paper, ImageNet: a 3-layer projector of 2048 with BatchNorm on every layer, output
included, 2 layers in its CIFAR-10 experiments; predictor 2048 → 512 → 2048, a bottleneck with
BatchNorm on its hidden layer only).
Glyph defaults: the SimCLR-sized projector of the config (512 → 128) followed by BatchNorm, a
predictor 128 → ``simsiam_pred_hidden`` → 128 with ``simsiam_pred_hidden`` = 128 (the paper's 512
scaled down like the projector's hidden layer, 2048 → 512), and the predictor trained at a constant
learning rate ``simsiam_pred_lr`` = 10 × ``--lr`` (``constant_lr``, applied by
``gessl.train.build_optimizer``). The paper keeps the predictor's rate constant (§4.2 and Table 1: "a fixed lr
for the predictor"), at the base rate; a faster predictor is the remedy of Tian, Chen and Ganguli
(ICML 2021, "Understanding self-supervised learning dynamics without contrastive pairs"), whose
analysis has the predictor's eigenspace lead the encoder's. A constant 10× rate learns best in
short runs on the glyphs; the paper's SGD recipe, weight decay, a wider predictor, per-view
BatchNorm and longer training did not help (``docs/bases.md``, 'SimSiam').
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import SSLOutput, project_views
from baselines.options import Projector, non_negative, option, positive
from baselines.simclr import projection_mlp


def negative_cosine(p, z):
    """Batch mean of D(p, stopgrad(z)) = −cos(p, z), no gradient through ``z``."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


class SimSiam(nn.Module):
    """SimSiam heads and loss; ``forward(backbone, batch)`` returns an ``SSLOutput``."""

    @dataclass
    class Options(Projector):
        """SimSiam's options (``baselines.options``)."""

        simsiam_pred_hidden: int = option(128, "hidden (bottleneck) width of the predictor (512 in the paper)",
                                          positive)
        simsiam_pred_lr: float = option(10.0, "the predictor's learning rate, a multiple of --lr held constant (no "
                                              "warm-up or decay; the paper holds it at 1x); 0: the schedule's, like "
                                              "every other parameter", non_negative)

    def __init__(self, feat_dim, proj_hidden=512, proj_dim=128, simsiam_pred_hidden=128, simsiam_pred_lr=10.0):
        super().__init__()
        self.constant_lr = {"predictor": simsiam_pred_lr}  # gessl.train.build_optimizer: a constant rate
        self.projector = projection_mlp(feat_dim, proj_hidden, proj_dim, output_bn=True)
        self.predictor = projection_mlp(proj_dim, simsiam_pred_hidden, proj_dim)
        self.proj_dim = proj_dim

    def forward(self, backbone, batch):
        z1, z2 = project_views(backbone, self.projector, batch)
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        loss = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
        return SSLOutput(loss, {"simsiam": loss}, (z1, z2))
