"""CACTUs (Hsu, Levine, Finn, ICLR 2019, "Unsupervised Learning via Meta-Learning", arXiv 1810.02334):
unsupervised meta-learning on tasks whose classes are clusters of the unlabelled training images.

Task construction (Algorithm 1, k-means variant):

1. embed the N training images with a frozen encoder φ: z_i = φ(x_i) ∈ R^D;
2. P partitions: partition p is k-means with k clusters of w_p ⊙ z, where w_1 = 1 and, for p ≥ 2,
   w_p ~ U(0, 1)^D rescales every embedding dimension at random, for diverse partitions (the
   authors' ``task_generator.py``, ``get_partitions_kmeans`` with ``--scaled_encodings``, True by
   default in their ``main.py``; repository kylehkhsu/cactus-maml);
3. in every partition the clusters with fewer than K + Q members (shots + queries) are dropped
   (``clean_partition`` there);
4. a task: one partition, N of its kept clusters, K + Q members of each, labelled 0..N−1 in a
   random order; meta-learn on such tasks.

k-means here (``kmeans``, in torch: scikit-learn is not a dependency): k-means++ seeding (Arthur &
Vassilvitskii 2007: the first centre uniform, each next one a data point drawn with probability
∝ its squared distance to the nearest centre chosen so far), then Lloyd iterations, assign each
point to its nearest centre, move each centre to the mean of its points (an empty cluster keeps its
centre), until no assignment changes or ``LLOYD_ITERATIONS``. Each step lowers or keeps the
objective Σ_i ‖z_i − c_{a(i)}‖². One seeding per partition, as the authors' ``n_init = 1`` for
P > 1. Unlike their code, a partition is not re-clustered when fewer than ¾ of its clusters hold
K + Q images; a partition left with fewer than N clusters is an error (use fewer clusters).

The meta-learner on a task is the project's: ``--cactus-learner proto`` is ``baselines.protonet``'s
ProtoNet (c_k the mean support feature, L = −(1/|Q|) Σ log softmax_k(−‖f(x) − c_k‖²)_y) and
``maml`` is ``baselines.maml``'s head-only MAML (w_{j+1} = w_j − α ∇_w CE(g_{w_j}(f(S)), y_S),
L = CE(g_{w_K}(f(Q)), y_Q)), the same modules on cluster pseudo-labels instead of class labels.
A task is the project's training episode (``tasks.training.episodes.EpisodeSampler`` over the
kept members of the partition): ``--episode-ways`` N, ``--episode-shots`` K, ``--episode-queries``
Q; the partition of step t is drawn from a generator seeded by (seed, t) and the episode by the
sampler from (seed, t), so ``--resume`` replays the same tasks.

The encoder (``--cactus-encoder``): ``random``, the run's backbone at its seeded random
initialisation (BatchNorm in eval mode), or a run folder (or ``backbone.pt``) trained before, for
instance by SimCLR: the paper's encoders were unsupervised ones (ACAI and BiGAN on Omniglot, whose
embeddings the authors distribute), and a random one is the weakest choice. The partitions are
computed when the training starts and again, the same, on a ``--resume`` (on the CPU, whose
kernels are deterministic); nothing is stored. The cost, paid before the first step: one forward
pass over the training set and P k-means runs (timed on the glyphs: docs/results.md, 'One-off costs').

Settings: the paper's Omniglot runs use k = 500 clusters and P = 100 partitions; the authors' script
``scripts/omniglot_kmeans.sh`` sets ``num_clusters=500`` but ``num_partitions=1`` ("100 partitions
takes a while") and trains CACTUs-MAML on 20-way 1-shot tasks with 5 queries, 5 inner steps of
0.05, 8 tasks a meta-batch. Here k = 500 (``--cactus-clusters``), P = 20 (``--cactus-partitions``,
for the CPU's sake), one task a step with the ProtoNet/MAML episode options (20-way 5-shot 5-query
by default). Published 5-way conv4 Omniglot accuracy (ACAI encoder): CACTUs-ProtoNet 68.1 / 83.6,
CACTUs-MAML 68.8 / 87.8 (1 / 5 shots). Here, with a random encoder, ``maml`` learns nothing that
transfers in short runs, so ``proto`` is the default (``docs/bases.md``, 'CACTUs').

CACTUs is itself a meta-learner (``meta_learner = True``): ``gessl.train`` refuses ``--meta gessl``
around it. It imports ProtoNet's and MAML's modules (learn2learn); the trainer hands it the frozen
encoder, the embedding function and the episode sampler (``episode_sampler``).
"""
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from baselines.maml import MAML
from baselines.options import Adaptation, at_least, one_of, option, positive
from baselines.protonet import ProtoNet

LLOYD_ITERATIONS = 100  # at most; glyph embeddings with k = 500 settle in 35-45


def kmeans(x, k, generator, iterations=LLOYD_ITERATIONS):
    """k-means of the rows of ``x`` [N, D] into ``k`` clusters: k-means++ seeding from ``generator``,
    then Lloyd iterations (the module docstring). Returns the assignment [N] (int64, 0..k−1) and the
    centres [k, D]."""
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"cannot cut {n} points into {k} clusters")
    chosen = [torch.randint(n, (1,), generator=generator)]
    nearest = (x - x[chosen[0]]).square().sum(1)
    for _ in range(k - 1):
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)  # all points taken: uniform
        chosen.append(torch.multinomial(weights, 1, generator=generator))
        nearest = torch.minimum(nearest, (x - x[chosen[-1]]).square().sum(1))
    centres = x[torch.cat(chosen)].clone()
    assign = None
    for _ in range(iterations):
        # argmin_c ‖x − c‖² = argmin_c (‖c‖² − 2 x·c): the per-row ‖x‖² does not move the argmin
        new = torch.addmm(centres.square().sum(1), x, centres.T, alpha=-2).argmin(1)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        full = counts > 0
        centres[full] = sums[full] / counts[full, None].to(x.dtype)
    return assign, centres


def kmeans_objective(x, assign, centres):
    """Σ_i ‖x_i − c_{a(i)}‖², the objective k-means lowers."""
    return (x - centres[assign]).square().sum()


def cactus_partitions(z, partitions, clusters, least, generator, progress=iter):
    """The P = ``partitions`` cluster labelings of the embeddings ``z`` [N, D] (the module docstring):
    int64 [P, N], a point's cluster in partition p, or −1 where its cluster has fewer than ``least``
    members (dropped). Partition 0 clusters ``z``, the others ``z`` with each dimension scaled by
    U(0, 1) weights drawn from ``generator``. ``progress`` wraps the loop over partitions (a progress bar)."""
    out = []
    for p in progress(range(partitions)):
        scaled = z if p == 0 else z * torch.rand(z.shape[1], generator=generator, dtype=z.dtype)
        assign, _ = kmeans(scaled, clusters, generator)
        counts = torch.bincount(assign, minlength=clusters)
        out.append(torch.where(counts[assign] >= least, assign, -1))
    return torch.stack(out)


class PartitionEpisodes:
    """Training episodes whose classes are clusters of one partition (``cactus_partitions``'s labels):
    ``sample(seed, step)`` draws the partition from (seed, step), then the episode from that
    partition's episode sampler (``sampler(labels, ways, shots, queries)``, built when first used), and
    returns the dataset indices and the episode labels in the sampler's layout."""

    def __init__(self, labels, ways, shots, queries, sampler):
        self.labels, self.ways, self.shots, self.queries, self.sampler = labels, ways, shots, queries, sampler
        for p, row in enumerate(labels):
            kept = len(torch.unique(row[row >= 0]))
            if kept < ways:
                raise ValueError(f"partition {p} of the CACTUs clusters has {kept} clusters of at least "
                                f"{shots + queries} images (--episode-shots + --episode-queries), fewer than "
                                f"--episode-ways {ways}; use fewer --cactus-clusters, ways, shots or queries")
        self.samplers = {}

    def partition(self, seed, step):
        """The partition the episode of step ``step`` of a run seeded ``seed`` is drawn from."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        return int(torch.randint(len(self.labels), (1,), generator=g))

    def sample(self, seed, step):
        p = self.partition(seed, step)
        if p not in self.samplers:
            members = torch.nonzero(self.labels[p] >= 0).squeeze(1)
            self.samplers[p] = members, self.sampler(self.labels[p][members], self.ways, self.shots, self.queries)
        members, sampler = self.samplers[p]
        index, labels = sampler.sample(seed, step)
        return members[index], labels


def encoder_path(name):
    """The backbone file of ``--cactus-encoder`` ``name`` (a run folder or a ``backbone.pt``), or None
    for ``random``; a ``ValueError`` (one line) when it is neither."""
    if name == "random":
        return None
    path = Path(name)
    path = path / "backbone.pt" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"--cactus-encoder {name!r} is neither random nor a run folder holding backbone.pt "
                         f"(or a backbone file); train one with `python -m gessl.train`")
    return path


class CACTUs(nn.Module):
    """ProtoNet or head-only MAML (``cactus_learner``) on episodes of cluster pseudo-labels, which
    ``episode_sampler`` builds at the start of training."""

    @dataclass
    class Options(Adaptation):
        """CACTUs's options (``baselines.options``)."""

        cactus_learner: str = option("proto", "the meta-learner on each cluster task, proto (ProtoNet's loss) or "
                                              "maml (MAML's head adapted with the --maml-* options); tasks are "
                                              "--episode-ways x (--episode-shots + --episode-queries) images",
                                     one_of("proto", "maml"))
        cactus_encoder: str = option("random", "the frozen encoder whose embeddings are clustered: random (the "
                                               "run's backbone at its seeded initialisation) or a run folder (its "
                                               "backbone.pt) or backbone file")
        cactus_partitions: int = option(20, "P, k-means partitions of the embeddings, all but the first on "
                                            "randomly rescaled dimensions (Hsu et al.: 100 on Omniglot)", positive)
        cactus_clusters: int = option(500, "k, clusters per partition; those with fewer than shots + queries images "
                                           "are dropped (Hsu et al.: 500 on Omniglot)", at_least(2))

    episodic = True
    meta_learner = True

    @staticmethod
    def check_config(cfg):
        """``ValueError`` (one line) for an encoder that is not there or fewer clusters than ways."""
        options = cfg.base_options
        encoder_path(options.cactus_encoder)
        if options.cactus_clusters < cfg.episode_ways:
            raise ValueError(f"--cactus-clusters {options.cactus_clusters} cannot give --episode-ways "
                             f"{cfg.episode_ways}-way tasks: a task's classes are clusters of one partition")

    def __init__(self, feat_dim, cactus_learner="proto", cactus_encoder="random", cactus_partitions=20,
                 cactus_clusters=500, episode_ways=20, episode_shots=5, episode_queries=5, maml_inner_steps=5,
                 maml_inner_lr=0.1, maml_first_order=False):
        super().__init__()
        self.proj_dim = feat_dim
        self.encoder, self.partitions, self.clusters = cactus_encoder, cactus_partitions, cactus_clusters
        self.ways, self.shots, self.queries = episode_ways, episode_shots, episode_queries
        self.learner = (ProtoNet(feat_dim, episode_shots, episode_queries) if cactus_learner == "proto" else
                        MAML(feat_dim, episode_ways, episode_shots, episode_queries, maml_inner_steps, maml_inner_lr,
                             maml_first_order))

    def forward(self, backbone, batch):
        return self.learner(backbone, batch)

    @property
    def encoder_file(self):
        """The backbone file of the frozen encoder, or None for the run's backbone at its initialisation."""
        return encoder_path(self.encoder)

    def episode_sampler(self, images, encoder, embed, sampler, seed, progress=iter):
        """The ``PartitionEpisodes`` of the training ``images``, embedded by ``embed(encoder, images,
        device=...)`` (the trainer's frozen ``encoder``: ``encoder_file``'s, or the run's backbone at its
        initialisation) and clustered P times from ``seed``; ``sampler(labels, ways, shots, queries)``
        draws a partition's episodes (``progress``: the trainer's progress bar over partitions)."""
        if self.clusters > len(images):
            raise ValueError(f"--cactus-clusters {self.clusters} is more than the {len(images)} training images; "
                             f"use fewer clusters")
        z = embed(encoder, images, device=next(encoder.parameters()).device)  # eval mode; left as it was
        labels = cactus_partitions(z, self.partitions, self.clusters, self.shots + self.queries,
                                   torch.Generator().manual_seed(seed), progress)
        return PartitionEpisodes(labels, self.ways, self.shots, self.queries, sampler)
