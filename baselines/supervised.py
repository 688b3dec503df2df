"""Supervised learning (SL), the label-using reference the SSL papers compare against: a classifier
on the backbone features, trained with cross-entropy on the class labels.

For N images with labels y_n ∈ {0..C−1} (the C training classes) and backbone features h¹, h² of
the two augmented views, a classifier with one weight vector w_k per class scores the classes::

    cosine (default, s > 0):   ℓ_k(h) = s · (h / ‖h‖) · (w_k / ‖w_k‖)
    linear (s = 0):            ℓ_k(h) = w_k · h + b_k
    L = −(1 / 2N) Σ_{v=1,2} Σ_n log softmax_k(ℓ_k(h^v_n))_{y_n}

(softmax cross-entropy, the "Supervised" rows of SSL papers such as SimCLR, Chen et al., ICML 2020,
here with the same augmented views as the SSL methods; the cosine classifier is Baseline++ of Chen,
Liu, Kira, Wang, Huang, ICLR 2019, "A Closer Look at Few-shot Classification"). The projections are
the backbone features h¹, h² themselves (``proj_dim`` = the feature width), so DSA's relations and
GeSSL's σ-posteriors are built on the representation the classifier reads.

Settings: one output per training class (``num_classes``, filled in by ``gessl.train`` from the
background split); at CIFAR scale the usual head is linear (s = 0) over 10 or 100 classes. On the
glyphs' 1,228 background classes a short run (150 steps of 128 images, every class seen ~16 times)
leaves the linear head near chance (loss ≈ log C) and the features below a random network's at
5-shot; a cosine head learns, and s = 5 did best of those tried, hence ``supervised_scale`` 5
(``docs/bases.md``, 'Barlow Twins' projector and the supervised reference's head').
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import SSLOutput
from baselines.options import non_negative, option


class Supervised(nn.Module):
    """A classifier over ``num_classes`` (cosine with scale ``supervised_scale``, or linear when it
    is 0) and its cross-entropy on both views."""

    @dataclass
    class Options:
        """Supervised's options (``baselines.options``)."""

        supervised_scale: float = option(5.0, "s, scale of the cosine classifier, logits s*cos(h, w_k) (0: a linear "
                                              "classifier W h + b, the CIFAR-scale choice)", non_negative)

    def __init__(self, feat_dim, num_classes, supervised_scale=5.0):
        super().__init__()
        self.classifier = nn.Linear(feat_dim, num_classes, bias=supervised_scale == 0)
        self.scale = supervised_scale
        self.proj_dim = feat_dim

    def logits(self, h):
        """ℓ(h) of the module docstring, [N, C]."""
        if self.scale == 0:
            return self.classifier(h)
        return self.scale * F.normalize(h, dim=1) @ F.normalize(self.classifier.weight, dim=1).T

    def forward(self, backbone, batch):
        if "labels" not in batch:
            raise ValueError("the supervised reference needs the class labels in batch['labels']")
        h1, h2 = backbone(torch.cat(batch["views"])).chunk(2)
        logits = self.logits(torch.cat([h1, h2]))
        targets = batch["labels"].repeat(2)
        loss = F.cross_entropy(logits, targets)
        accuracy = (logits.argmax(1) == targets).float().mean().detach()
        return SSLOutput(loss, {"cross_entropy": loss, "train_accuracy": accuracy}, (h1, h2))
