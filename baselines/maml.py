"""MAML (Finn, Abbeel, Levine, ICML 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks"), head-only as in ANIL (Raghu, Raghu, Bengio, Vinyals, ICLR 2020, "Rapid Learning or
Feature Reuse?"): a label-using, episodic reference.

For an episode with support set S and query set Q (split as ProtoNet's ``support_mask`` does),
backbone features h = f_φ(x) and a linear head g_w (one output per episode class)::

    w_0 = w,   w_{k+1} = w_k − α ∇_w CE(g_{w_k}(f_φ(S)), y_S)      (k = 0..K−1; eq. 1, K steps)
    L(φ, w) = CE(g_{w_K}(f_φ(Q)), y_Q)                             (the meta-objective, Algorithm 2)

minimised over the backbone φ and the head's initialisation w, back through the K inner steps
(second order; with ``maml_first_order`` dw_K/dw = identity, FOMAML). Every image counts with both
augmented views; the projections are the backbone features of the two views.

Head only (ANIL) rather than the whole network: on 2 CPU cores full MAML through conv4 costs K
extra second-order passes through the backbone per step, many ProtoNet steps' worth at K = 5
(docs/results.md, 'Unsupervised meta-learners: cost of a step'), while ANIL showed adapting the
head alone matches MAML on Omniglot and MiniImageNet, and the evaluation here reads only the
backbone's features (prototype classifier), not an adapted network. The backbone is still
trained through the adapted head's query loss.

The one exception to "baselines imports only torch": the inner loop is learn2learn's
``learn2learn.algorithms.MAML`` wrapper (``clone`` + ``adapt``), the standard implementation,
rather than a copy of its few lines. Keeping the method here, beside ProtoNet, keeps one registry of base methods
(``baselines.BASE_METHODS``); learn2learn is a dependency of the project anyway (``tasks``).

MAML is itself a meta-learner (``meta_learner = True``): ``gessl.train`` refuses ``--meta gessl``
around it (nested meta-learning). With ``--reg dsa`` it works: DSA regularises the backbone
features of the two views.

Settings: Finn et al. train 20-way Omniglot with K = 5 steps of α = 0.1 (5-way: K = 1, α = 0.4)
and meta-batches of 16 tasks; here one episode a step (20-way 5-shot 5-query by default, the
``episode_*`` fields) and K = 5, α = 0.1 (``maml_inner_steps``, ``maml_inner_lr``).
"""
import learn2learn
import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import SSLOutput
from baselines.options import Adaptation
from baselines.protonet import support_mask


class MAML(nn.Module):
    """A linear head over ``episode_ways`` classes adapted by ``learn2learn.algorithms.MAML``."""

    Options = Adaptation  # its options (``baselines.options``)

    episodic = True
    meta_learner = True

    def __init__(self, feat_dim, episode_ways=20, episode_shots=5, episode_queries=5, maml_inner_steps=5,
                 maml_inner_lr=0.1, maml_first_order=False):
        super().__init__()
        self.head = learn2learn.algorithms.MAML(nn.Linear(feat_dim, episode_ways), lr=maml_inner_lr,
                                                first_order=maml_first_order)
        self.proj_dim = feat_dim
        self.ways, self.inner_steps = episode_ways, maml_inner_steps
        self.support_share = episode_shots / (episode_shots + episode_queries)

    def forward(self, backbone, batch):
        h1, h2 = backbone(torch.cat(batch["views"])).chunk(2)
        classes, codes = torch.unique(batch["labels"], return_inverse=True)
        if len(classes) > self.ways:
            raise ValueError(f"the batch has {len(classes)} classes but the MAML head has {self.ways} outputs "
                             f"(--episode-ways)")
        support = support_mask(batch["labels"], self.support_share).repeat(2)
        h, y = torch.cat([h1, h2]), codes.repeat(2)
        learner = self.head.clone()
        support_losses = []
        for _ in range(self.inner_steps):
            support_loss = F.cross_entropy(learner(h[support]), y[support])
            support_losses.append(support_loss.detach())
            learner.adapt(support_loss)
        logits = learner(h[~support])
        loss = F.cross_entropy(logits, y[~support])
        accuracy = (logits.argmax(1) == y[~support]).float().mean().detach()
        terms = {"maml_query_loss": loss, "maml_query_accuracy": accuracy}
        if support_losses:
            terms["maml_support_loss"] = support_losses[0]
        return SSLOutput(loss, terms, (h1, h2))
