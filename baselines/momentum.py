"""The momentum (EMA) copy of an online backbone + projector, shared by MoCo and BYOL.

MoCo's key encoder (He et al., CVPR 2020, eq. 2) and BYOL's target network (Grill et al.,
NeurIPS 2020, eq. 1) are the same object: a copy of the online backbone and projector whose
parameters ξ are not trained by gradient but follow the online parameters θ after every optimiser
step::

    ξ ← m·ξ + (1 − m)·θ

Its buffers (BatchNorm running statistics) are copied from the online networks at each update.
The parameters carry ``requires_grad=False``, so GeSSL's inner loop never adapts them and no
gradient ever reaches them; the forward pass runs under ``no_grad``.
"""
import copy

import torch
from torch import nn


class MomentumEncoder(nn.Module):
    """A frozen copy of ``backbone`` followed by ``projector``; ``follow`` moves it by EMA."""

    def __init__(self, backbone, projector):
        super().__init__()
        self.backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.projector = copy.deepcopy(projector).requires_grad_(False)

    @torch.no_grad()
    def forward(self, x):
        return self.projector(self.backbone(x))

    def follow(self, backbone, projector, momentum):
        """ξ ← m·ξ + (1 − m)·θ for the parameters of the online ``backbone`` and ``projector``;
        their buffers are copied."""
        follow_by_ema(self.backbone, backbone, momentum)
        follow_by_ema(self.projector, projector, momentum)


@torch.no_grad()
def follow_by_ema(target, online, momentum):
    """ξ ← m·ξ + (1 − m)·θ for each parameter ξ of ``target`` and θ of ``online`` (the same
    architecture); the buffers of ``online`` are copied into ``target``."""
    for xi, theta in zip(target.parameters(), online.parameters(), strict=True):
        xi.mul_(momentum).add_((1 - momentum) * theta)
    for b, c in zip(target.buffers(), online.buffers(), strict=True):
        b.copy_(c)
