"""MUSIC (Niu & Wang, "Self-Supervised Representation Learning With MUlti-Segmental Informational
Coding", arXiv 2206.06461): the projection is cut into segments, each a distribution over discrete
attributes, and information measures alone (no stop-gradient, momentum encoder, memory bank or
large batch) keep the attributes from collapsing.

The paper's code was never released. The loss below is the form of the same authors' later public
implementation (IMSVD, arXiv 2501.03469), which keeps the segment/attribute structure; it follows
``docs/music.md``.

The projection z ([N, D]) of each view is cut into K segments of B units (D = K·B), and a softmax
per segment gives the attribute distribution p_{n,k,:} = softmax(z_{n,k,:}) (temperature 1),
clamped below at 1e-8. With P = (p¹)ᵀ p² / N, the (K·B)×(K·B) matrix whose block P^{kl} is the
B×B joint distribution of segment k in view 1 and segment l in view 2::

    L_ti  = −(1/NK) Σ_{n,k} log Σ_b p¹_{n,k,b} p²_{n,k,b}              (transform invariance)
    L_dia = (1/K) Σ_k Σ_b P^{kk}_bb log P^{kk}_bb                        (agreement, uniform use)
    L_off = (1/(K(K−1))) Σ_{k≠l} Σ_{b,b'} P^{kl}_bb' log P^{kl}_bb'      (independent segments)
    L = w_ti L_ti + w_dia L_dia + w_off L_off                            (the spec's weights: 1)

L_ti ≥ 0, L_dia ≥ −log B and L_off ≥ −2 log B, so the global minimum is −3 log B (one-hot
attributes, identical across views, each segment uniform over the batch and every pair of segments
independent); full collapse (every sample on the same attribute) scores 0, and the degenerate
uniform softmax (z = 0) scores −(1 + 2/B) log B. Under DDP, P is computed over the gathered batch
and L_ti on the local one.

Settings (the authors' later implementation): CIFAR-10, ResNet-18, projector 512 → 1024 → 1024 →
1024 (BN + ReLU on the hidden layers, no bias on the last), B = 32 (32 segments), SGD lr 0.1 ·
batch/256, weight decay 5e-4, batch 512; ImageNet, projector 2048 → 8192 → 8160 with B = 80. On the
28×28 glyphs: feature → ``music_hidden`` (1024) → ``music_dim`` (2048) with one hidden layer, B = 32
(64 segments), w_dia = w_off = 1 and w_ti = 0.2, a [choice] of ours against the spec's 1, which
learns better features in short runs. ``docs/bases.md``, 'MUSIC', has the measurements, among them
width and the authors' SGD recipe (lr 0.05, weight decay 5e-4), both worse at this budget.
"""
from dataclasses import dataclass

import torch
from torch import nn

from baselines.base import SSLOutput, project_views
from baselines.distributed import gather
from baselines.options import non_negative, option, positive


def segment_probabilities(z, segment):
    """Attribute distributions [N, K, B] of projections ``z`` ([N, K·B]): softmax per segment of B
    units, clamped below at 1e-8."""
    return torch.softmax(z.unflatten(1, (-1, segment)), dim=2).clamp_min(1e-8)


def music_loss(z1, z2, segment, weights=(1.0, 1.0, 1.0)):
    """L of the module docstring and its three terms (L_ti, L_dia, L_off) for segments of ``segment``
    units; ``weights`` = (w_ti, w_dia, w_off)."""
    p1, p2 = segment_probabilities(z1, segment), segment_probabilities(z2, segment)
    k = p1.shape[1]
    invariance = -(p1 * p2).sum(2).log().mean()
    g1, g2 = gather(p1), gather(p2)
    joint = torch.einsum("nkb,nlc->klbc", g1, g2) / len(g1)   # joint[k, l] = P^{kl}, a B×B block
    entropy_terms = joint * joint.log()
    same = entropy_terms.diagonal(dim1=0, dim2=1)               # [B, B, K]: the blocks P^{kk}
    diagonal = same.diagonal(dim1=0, dim2=1).sum() / k
    off_diagonal = (entropy_terms.sum() - same.sum()) / (k * (k - 1))
    w_ti, w_dia, w_off = weights
    return w_ti * invariance + w_dia * diagonal + w_off * off_diagonal, invariance, diagonal, off_diagonal


class MUSIC(nn.Module):
    """MUSIC head and loss; ``forward(backbone, batch)`` returns an ``SSLOutput``.

    Projector: Linear → BatchNorm → ReLU → Linear without bias, ``feat_dim`` → ``music_hidden`` →
    ``music_dim``, cut into segments of ``music_segment`` units (at least two segments).
    """

    @dataclass
    class Options:
        """MUSIC's options (``baselines.options``)."""

        music_hidden: int = option(1024, "hidden width of the projector", positive)
        music_dim: int = option(2048, "D, projector output width = segments x segment size", positive)
        music_segment: int = option(32, "B, attributes per segment (--music-dim holds at least two segments)",
                                    positive)
        music_ti: float = option(0.2, "weight of the transform-invariance term (docs/bases.md)", non_negative)
        music_dia: float = option(1.0, "weight of the diagonal (same-segment) entropy term", non_negative)
        music_off: float = option(1.0, "weight of the off-diagonal (cross-segment) entropy term", non_negative)

        def check(self):
            if self.music_dim % self.music_segment or self.music_dim < 2 * self.music_segment:
                return [("music_dim", f"{self.music_dim} must be a multiple of --music-segment "
                                      f"{self.music_segment}, at least two segments")]
            return []

    def __init__(self, feat_dim, music_hidden=1024, music_dim=2048, music_segment=32, music_ti=0.2,
                 music_dia=1.0, music_off=1.0):
        super().__init__()
        if music_dim % music_segment or music_dim // music_segment < 2:
            raise ValueError(f"music_dim {music_dim} must be at least two segments of {music_segment} units")
        self.projector = nn.Sequential(nn.Linear(feat_dim, music_hidden), nn.BatchNorm1d(music_hidden),
                                       nn.ReLU(inplace=True), nn.Linear(music_hidden, music_dim, bias=False))
        self.proj_dim = music_dim
        self.segment = music_segment
        self.weights = (music_ti, music_dia, music_off)

    def forward(self, backbone, batch):
        z1, z2 = project_views(backbone, self.projector, batch)
        loss, ti, dia, off = music_loss(z1, z2, self.segment, self.weights)
        return SSLOutput(loss, {"music_invariance": ti, "music_diagonal": dia, "music_off_diagonal": off},
                         (z1, z2))
