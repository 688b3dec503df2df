"""Prototypical Networks (Snell, Swersky, Zemel, NeurIPS 2017, "Prototypical Networks for Few-shot
Learning"), a label-using, episodic reference: trained on few-shot episodes of the training classes.

For an episode with support set S_k of class k and queries x with labels y, embedding f (the
backbone)::

    c_k = (1 / |S_k|) Σ_{x_i ∈ S_k} f(x_i)                          (eq. 1)
    p(y = k | x) = exp(−‖f(x) − c_k‖²) / Σ_k' exp(−‖f(x) − c_k'‖²)  (eq. 2, squared Euclidean d)
    L = −(1 / |Q|) Σ_{(x, y) ∈ Q} log p(y | x)                       (Algorithm 1)

Support and query within a labelled batch (``support_mask``): per class, in batch order, the first
share s = shots / (shots + queries) of the class's n images (round(s·n), at least 1 and at most
n − 1) are support, the rest queries. On a training episode (``tasks.training.episodes``) that is exactly its
support set; on a part of it (a GeSSL task's support or query set) every class keeps the same
share. A class with a single image in the batch cannot be both: that is an error. Each image
counts with both augmented views (both views of a support image go into the prototype, both views
of a query image are queries); the projections are the backbone features of the two views.

Training is episodic (``episodic = True``): ``gessl.train`` builds each step's batch from an
episode of ``episode_ways`` classes × (``episode_shots`` + ``episode_queries``) images instead of
``--batch-size`` images. Snell et al. train Omniglot on 60-way episodes with 5 queries a class and
as many shots as at test time (1 or 5); on the glyphs the defaults are 20-way 5-shot 5-query
(200 images a step, about the cost of a 128-image SSL batch with its two views).
"""
import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import SSLOutput
from baselines.options import NoOptions


def support_mask(labels, support_share):
    """Which items of a labelled batch are support (see the module docstring): a bool tensor [N]."""
    _, codes = torch.unique(labels, return_inverse=True)
    one_hot = F.one_hot(codes)
    counts = one_hot.sum(0)
    if counts.min() < 2:
        raise ValueError(f"class {labels[codes == counts.argmin()][0].item()} has a single image in this batch; "
                         f"episodic losses need at least 2 images of every class (a support and a query)")
    rank = (one_hot.cumsum(0) - 1).gather(1, codes[:, None]).squeeze(1)  # position within its class
    n_support = torch.floor(counts * support_share + 0.5).long().clamp(1, None).minimum(counts - 1)
    return rank < n_support[codes]


def prototypical_loss(embeddings, labels, support):
    """L of eq. 1–2 for ``embeddings`` [N, D] with ``labels`` [N], ``support`` [N] bool: the mean
    cross-entropy of the queries over negative squared distances to the class prototypes; also
    returns the query accuracy."""
    classes, codes = torch.unique(labels, return_inverse=True)
    one_hot = F.one_hot(codes[support], len(classes)).to(embeddings.dtype)  # [S, C]
    prototypes = one_hot.T @ embeddings[support] / one_hot.sum(0)[:, None]
    queries = embeddings[~support]
    logits = -(queries[:, None, :] - prototypes[None, :, :]).square().sum(-1)
    loss = F.cross_entropy(logits, codes[~support])
    return loss, (logits.argmax(1) == codes[~support]).float().mean()


class ProtoNet(nn.Module):
    """The prototypical loss on the backbone features; no heads, no parameters of its own."""

    Options = NoOptions  # its options (``baselines.options``)

    episodic = True
    has_heads = False  # nothing for GeSSL's inner loop to adapt on backbone features

    def __init__(self, feat_dim, episode_shots=5, episode_queries=5):
        super().__init__()
        self.proj_dim = feat_dim
        self.support_share = episode_shots / (episode_shots + episode_queries)

    def forward(self, backbone, batch):
        h1, h2 = backbone(torch.cat(batch["views"])).chunk(2)
        support = support_mask(batch["labels"], self.support_share)
        loss, accuracy = prototypical_loss(torch.cat([h1, h2]), batch["labels"].repeat(2), support.repeat(2))
        return SSLOutput(loss, {"proto_loss": loss, "proto_accuracy": accuracy.detach()}, (h1, h2))
