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
Glyph defaults: the SimCLR-sized projector of the config (512 → 128) followed by BatchNorm, and a
predictor 128 → ``simsiam_pred_hidden`` → 128 with ``simsiam_pred_hidden`` = 128 (the paper's 512
scaled down like the projector's hidden layer, 2048 → 512). On the glyphs SimSiam stays below a
random network in short runs (150 steps, batch 128, 5-way 1-shot / 5-shot; random: 54.0 / 73.9 %):
hidden width 128 gave 51.9 / 63.2 %, the 4× bottleneck 32 gave 37.9 / 44.8 %, 128 without the
projector's output BatchNorm 42.1 / 49.4 %, a 1024-wide projector (predictor 256) 46.6 / 56.6 %,
and lr 5e-4 instead of 2e-3 49.3 / 61.8 %.
"""
import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import SSLOutput, project_views
from baselines.simclr import projection_mlp


def negative_cosine(p, z):
    """Batch mean of D(p, stopgrad(z)) = −cos(p, z), no gradient through ``z``."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


class SimSiam(nn.Module):
    """SimSiam heads and loss; ``forward(backbone, batch)`` returns an ``SSLOutput``."""

    def __init__(self, feat_dim, proj_hidden=512, proj_dim=128, simsiam_pred_hidden=128):
        super().__init__()
        self.projector = nn.Sequential(*projection_mlp(feat_dim, proj_hidden, proj_dim), nn.BatchNorm1d(proj_dim))
        self.predictor = projection_mlp(proj_dim, simsiam_pred_hidden, proj_dim)
        self.proj_dim = proj_dim

    def forward(self, backbone, batch):
        z1, z2 = project_views(backbone, self.projector, batch)
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        loss = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
        return SSLOutput(loss, {"simsiam": loss}, (z1, z2))
