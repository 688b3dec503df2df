"""MoCo v2 (He et al., CVPR 2020, "Momentum Contrast for Unsupervised Visual Representation
Learning"; Chen et al., arXiv 2003.04297, "Improved Baselines with Momentum Contrastive Learning"):
queries from the online backbone + projector, keys from their momentum copy, and a queue of past
keys as negatives.

For a query q and its positive key k⁺ (the other view of the same image through the momentum
encoder), both ℓ2-normalised, and the K normalised keys k⁻ held in the queue, InfoNCE (eq. 1 of
He et al.) is::

    ℓ(q, k⁺) = −log  exp(q·k⁺ / τ) / (exp(q·k⁺ / τ) + Σ_{k⁻ ∈ queue} exp(q·k⁻ / τ))

The loss here is symmetric [choice]: both views serve as queries, each against the key of the
other view, L = ½ · mean_n [ℓ(q¹_n, k²_n) + ℓ(q²_n, k¹_n)] (the paper's loss is ℓ(q¹, k²) alone;
the symmetric form, used by MoCo v3, gives every image two queries per step, which helps small
batches). The negatives are the queue as it stood before this batch; afterwards the keys of both
views, gathered over processes, are enqueued (first in, first out), so each image leaves two keys.

The key encoder ξ follows the online backbone and projector θ after every optimiser step:
ξ ← m·ξ + (1 − m)·θ (eq. 2, ``baselines.momentum``). Under GeSSL the inner loop runs on scratch
copies of the buffers, so only the outer forward pass enqueues. The paper's shuffling BatchNorm
(sec. 3.3, against a multi-GPU leak through batch statistics) is left out [choice]: both encoders
normalise over the whole batch of both views, which on the glyphs trains well (``docs/bases.md``).

Settings (paper, ImageNet: MLP head 2048 → 128 without BatchNorm, τ = 0.2, K = 65536, m = 0.999;
CIFAR-scale reimplementations use K = 4096). Glyph defaults: the SimCLR-sized projector of the
config (512 → 128, with BatchNorm like every head of this package), the shared ``temperature``
(0.1), ``moco_queue`` = 4096 and ``moco_momentum`` = 0.99. The background split holds 24,560
images, 191 steps of 128: a queue of 4096 holds the keys of the last 16 steps (256 keys per step;
the same under GeSSL with ``--outer-set task``, whose outer forward sees all 128 images; 32 steps
with ``--outer-set query``, whose outer forward sees the 64 query images), recent enough for the key encoder not to have drifted, and never a key of the query's own image
from an earlier epoch (that would need more than 24,000 slots). m = 0.999 lets a 150-step run
move the key encoder only 14 % of the way from its random start (0.999¹⁵⁰ ≈ 0.86); with 0.99 it
forgets its start within a few hundred steps (0.99¹⁵⁰ ≈ 0.22).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import SSLOutput
from baselines.distributed import gather
from baselines.momentum import MomentumEncoder
from baselines.options import Projector, half_open_unit, option, positive
from baselines.simclr import projection_mlp


def info_nce(q, k, queue, temperature):
    """Mean over the rows of ``q`` of ℓ(q, k⁺) (module docstring); ``queue`` [K, D] holds
    normalised negatives, ``q`` and ``k`` ([N, D]) are normalised here."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


class MoCo(nn.Module):
    """MoCo v2 heads, key encoder and queue; ``forward(backbone, batch)`` returns an ``SSLOutput``.

    ``backbone`` is the online backbone, copied into the key encoder at construction.
    ``projector_output_bn``: a BatchNorm on the projector's output (none in MoCo; PsCo's has one).
    """

    @dataclass
    class Options(Projector):
        """MoCo's options (``baselines.options``)."""

        temperature: float = option(0.1, "tau, temperature of the InfoNCE loss", positive)
        moco_queue: int = option(4096, "keys held in the queue (MoCo's negatives, 65536 in its paper; PsCo's shots "
                                       "and negatives, one key per image, 16384 in its paper)", positive)
        moco_momentum: float = option(0.99, "m, momentum of the key encoder (0.999 in MoCo's paper, 0.99 in PsCo's)",
                                      half_open_unit)

    projector_output_bn = False

    def __init__(self, feat_dim, backbone, proj_hidden=512, proj_dim=128, temperature=0.1, moco_queue=4096,
                 moco_momentum=0.99):
        super().__init__()
        self.projector = projection_mlp(feat_dim, proj_hidden, proj_dim, output_bn=self.projector_output_bn)
        self.key_encoder = MomentumEncoder(backbone, self.projector)
        self.register_buffer("queue", F.normalize(torch.randn(moco_queue, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.proj_dim = proj_dim
        self.temperature = temperature
        self.momentum = moco_momentum

    def forward(self, backbone, batch):
        views = torch.cat(batch["views"])
        q1, q2 = self.projector(backbone(views)).chunk(2)
        keys = F.normalize(self.key_encoder(views), dim=1)
        k1, k2 = keys.chunk(2)
        negatives = self.queue.clone()  # the graph keeps this copy; the queue itself changes below
        loss = (info_nce(q1, k2, negatives, self.temperature) + info_nce(q2, k1, negatives, self.temperature)) / 2
        self.enqueue(gather(keys))
        return SSLOutput(loss, {"moco_infonce": loss}, (q1, q2))

    @torch.no_grad()
    def enqueue(self, keys):
        """Write ``keys`` into the queue from the pointer on, wrapping around, in place; the result
        is that of enqueueing them one by one (first in, first out)."""
        size, n = len(self.queue), len(keys)
        start = max(0, n - size)  # of more keys than slots, only the last ``size`` stay
        rows = (self.queue_ptr + torch.arange(start, n, device=keys.device)) % size
        self.queue.index_copy_(0, rows, keys[start:])
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    def after_step(self, backbone, progress):
        """Once per optimiser step: the key encoder follows ``backbone`` and the projector."""
        self.key_encoder.follow(backbone, self.projector, self.momentum)
