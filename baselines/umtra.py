"""UMTRA (Khodadadeh, Bölöni, Shah, NeurIPS 2019, "Unsupervised Meta-Learning for Few-Shot Image
Classification"): unsupervised meta-learning on tasks built from unlabelled images.

A task takes N unlabelled images x_1..x_N and gives each its own class: the images themselves are
the support set (one shot per class) and their augmentations A(x_i) are the queries (Algorithm 1).
N images drawn at random from a set of many classes rarely share a class, which is what makes the
tasks usable without labels. Here a batch of B images (``--batch-size``) is cut into T = ⌈B / N⌉
contiguous tasks (``baselines.shares.task_slices``: at most N images each, sizes differing by at most one,
never fewer than 2 images; 128 images give 24 tasks of 5 and 2 of 4), and each image's two
augmented views (``batch["views"]``) are its two queries.

The meta-learner on a task (backbone features h = f_φ(x), s_i = h(x_i), q the queries with class y):

- ``maml`` (the paper's learner, the default; head only, as ``baselines.maml``, ANIL, Raghu et al.
  2020): a linear head W over N outputs adapted on the support set by K steps
  W_{k+1} = W_k − α ∇_W CE(W_k s, y_S), then L_task = CE(W_K h(q), y_Q), back through the K steps
  (learn2learn's ``MAML``; ``maml_inner_steps``, ``maml_inner_lr``, ``maml_first_order``).
- ``proto`` (the ProtoNet form, Snell et al. 2017): the prototype of class i is s_i, and
  L_task = −(1 / |Q|) Σ_{(q, y)} log softmax_i(−‖h(q) − s_i‖²)_y.

L = (1 / T) Σ_task L_task (the paper's meta-batch mean). Settings: the paper's Omniglot runs use
N = 5 (``umtra_ways``) and meta-batches of 25 tasks, which a batch of 128 gives (26 tasks).
``maml`` (the paper's) is the default: the squared distances of ProtoNet's loss make tasks of five
unrelated images easy, while the adapted head's cross-entropy stays informative (``docs/bases.md``;
docs/results.md, 'Every base method alone').

UMTRA is itself a meta-learner (``meta_learner = True``): ``gessl.train`` refuses ``--meta gessl``
around it. The projections are the backbone features of the two views.
"""
from dataclasses import dataclass

import learn2learn
import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import SSLOutput
from baselines.options import Adaptation, at_least, one_of, option
from baselines.shares import task_slices


def umtra_tasks(n, ways):
    """The ⌈n / ways⌉ contiguous slices that cut ``n`` images into tasks of ``ways`` or fewer classes."""
    tasks = task_slices(n, -(-n // ways))
    if min(s.stop - s.start for s in tasks) < 2:
        raise ValueError(f"UMTRA cannot cut a batch of {n} images into {ways}-way tasks of at least 2 images; "
                         f"use a larger --batch-size")
    return tasks


class UMTRA(nn.Module):
    """UMTRA's tasks and meta-learner (``proto`` or ``maml``) over unlabelled batches."""

    @dataclass
    class Options(Adaptation):
        """UMTRA's options (``baselines.options``)."""

        umtra_ways: int = option(5, "N, unlabelled images (classes) per task; a batch gives ceil(batch / N) tasks "
                                    "(Khodadadeh et al.: 5 on Omniglot)", at_least(2))
        umtra_learner: str = option("maml", "the meta-learner on each task, maml (a linear head adapted with the "
                                            "--maml-* options, the paper's) or proto (ProtoNet's loss)",
                                    one_of("maml", "proto"))

    meta_learner = True

    @staticmethod
    def check_config(cfg):
        """``ValueError`` (one line) when a batch of ``cfg.batch_size`` cannot be cut into tasks."""
        umtra_tasks(cfg.batch_size, cfg.base_options.umtra_ways)

    def __init__(self, feat_dim, umtra_ways=5, umtra_learner="maml", maml_inner_steps=5, maml_inner_lr=0.1,
                 maml_first_order=False):
        super().__init__()
        self.proj_dim, self.ways, self.learner, self.inner_steps = feat_dim, umtra_ways, umtra_learner, maml_inner_steps
        if umtra_learner == "maml":
            self.head = learn2learn.algorithms.MAML(nn.Linear(feat_dim, umtra_ways), lr=maml_inner_lr,
                                                    first_order=maml_first_order)

    def forward(self, backbone, batch):
        images, (v1, v2) = batch["images"], batch["views"]
        s, h1, h2 = backbone(torch.cat([images, v1, v2])).chunk(3)
        losses, correct = [], []
        for task in umtra_tasks(len(images), self.ways):
            support, queries = s[task], torch.cat([h1[task], h2[task]])
            labels = torch.arange(len(support), device=support.device).repeat(2)
            logits = self.task_logits(support, queries)
            losses.append(F.cross_entropy(logits, labels))
            correct.append((logits.argmax(1) == labels).float())
        loss = torch.stack(losses).mean()
        accuracy = torch.cat(correct).mean().detach()
        return SSLOutput(loss, {"umtra_query_loss": loss, "umtra_query_accuracy": accuracy}, (h1, h2))

    def task_logits(self, support, queries):
        """The queries' logits over the task's classes: −squared distance to each support feature
        (``proto``), or the head adapted on the support set (``maml``)."""
        if self.learner == "proto":
            return -(queries[:, None, :] - support[None, :, :]).square().sum(-1)
        ways = len(support)
        learner, labels = self.head.clone(), torch.arange(ways, device=support.device)
        for _ in range(self.inner_steps):
            learner.adapt(F.cross_entropy(learner(support)[:, :ways], labels))
        return learner(queries)[:, :ways]
