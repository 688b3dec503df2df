"""Crowding metrics of labelled frozen features: how much classes overlap.

The quantities the DSA paper (Song et al., arXiv 2407.13541) discusses, with the project's
definitions (``docs/dsa.md``). On L2-normalised features h_i with labels, class c having centroid
μ_c (the mean of its features) and C classes:

- intra-class variance   V = mean_c mean_{i∈c} ‖h_i − μ_c‖²
- inter-class separation S = mean_{c<c'} ‖μ_c − μ_c'‖
- crowding ratio         V / S²   (lower is better: tight classes far apart)
- crowded share          the share of samples nearer some other class's centroid than their own
                         (averaged per class, then over classes)

Intervals (``ci95``): a jackknife over classes for V, S and V/S² (each class left out in turn,
1.96·√((C−1)/C · Σ(θ_(c) − θ̄)²)); for the crowded share 1.96·s/√C over the per-class shares, with
the centroids of all classes kept.
"""
import torch
import torch.nn.functional as F

from tasks.common.errors import UserError

METRICS = ("intra_class_variance", "inter_class_separation", "crowding_ratio", "crowded_share")


def _jackknife_ci95(leave_one_out):
    c = len(leave_one_out)
    return float(1.96 * torch.sqrt((c - 1) / c * (leave_one_out - leave_one_out.mean()).square().sum()))


@torch.no_grad()
def crowding_metrics(features, labels):
    """The four metrics of the module docstring: name → (value, ci95)."""
    labels = torch.as_tensor(labels)
    classes, inverse = labels.unique(return_inverse=True)
    c = len(classes)
    if c < 3:
        raise UserError(f"crowding metrics need at least 3 classes, got {c}")
    h = F.normalize(torch.as_tensor(features).double(), dim=1)
    counts = torch.bincount(inverse, minlength=c).double()
    centroids = torch.zeros(c, h.shape[1], dtype=h.dtype).index_add_(0, inverse, h) / counts[:, None]
    intra_c = torch.zeros(c, dtype=h.dtype).index_add_(0, inverse, (h - centroids[inverse]).square().sum(1)) / counts
    pair = torch.cdist(centroids, centroids)
    pairs = c * (c - 1) / 2
    intra = intra_c.mean()
    inter = pair.sum() / 2 / pairs
    intra_loo = (intra_c.sum() - intra_c) / (c - 1)
    inter_loo = (pair.sum() / 2 - pair.sum(1)) / ((c - 1) * (c - 2) / 2)
    to_centroids = torch.cdist(h, centroids)
    own = to_centroids.gather(1, inverse[:, None]).squeeze(1)
    nearest_other = to_centroids.scatter(1, inverse[:, None], float("inf")).min(1).values
    crowded_c = torch.zeros(c, dtype=h.dtype).index_add_(0, inverse, (nearest_other < own).double()) / counts
    return {
        "intra_class_variance": (float(intra), _jackknife_ci95(intra_loo)),
        "inter_class_separation": (float(inter), _jackknife_ci95(inter_loo)),
        "crowding_ratio": (float(intra / inter ** 2), _jackknife_ci95(intra_loo / inter_loo ** 2)),
        "crowded_share": (float(crowded_c.mean()), float(1.96 * crowded_c.std() / c ** 0.5)),
    }
