"""Training episodes for episodic methods (ProtoNet, MAML), drawn with learn2learn's task samplers.

An episode of training step ``step`` is ``ways`` classes of the background split, uniformly without
replacement, and ``shots + queries`` images of each, without replacement, drawn by the project's one
episode sampler (``tasks.evaluation.fewshot.episode_drawer``: learn2learn's ``Taskset`` over a
``MetaDataset`` of (index, class) pairs with the fused ``NWays`` + ``KShots``), the one the
evaluation draws its episodes with.

Layout: round by round, one image of every class per round, the classes in the same order each
round, so position ``r * ways + c`` holds image ``r`` of episode class ``c`` and the labels are
``0..ways-1`` repeated. The first ``shots`` rounds are the support set, the last ``queries`` rounds
the query set: any split of the episode into its first and second part (GeSSL's support and query
sets) keeps every class on both sides, and "the first share of each class's images" is the
episode's support set.

learn2learn draws from Python's ``random``; it is seeded from ``(seed, step)`` for each episode and
the caller's state restored, so an episode depends on nothing but ``(labels, ways, shots, queries,
seed, step)``: ``--resume`` replays the same episodes. (The evaluation draws all of its episodes
from one seed and lays them out class by class, for batched scoring.)
"""
import random

import numpy as np
import torch

from tasks.common.errors import UserError
from tasks.evaluation.fewshot import class_codes, episode_drawer


class EpisodeSampler:
    """Seeded ``ways``-way episodes of ``shots + queries`` images a class over integer ``labels``.

    ``sample(seed, step)`` returns ``(index, labels)``: int64 tensors [ways * (shots + queries)], the
    dataset indices of the episode in the layout of the module docstring and their episode labels.
    """

    def __init__(self, labels, ways, shots, queries):
        codes = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels, dtype=np.int64)
        counts = np.bincount(codes)
        present = np.flatnonzero(counts)
        if ways < 2 or ways > len(present):
            raise UserError(f"--episode-ways {ways}: training episodes need 2 to {len(present)} classes "
                            f"(the training split has {len(present)})")
        per_class = shots + queries
        if shots < 1 or queries < 1 or per_class > counts[present].min():
            raise UserError(f"--episode-shots {shots} + --episode-queries {queries} need {per_class} images "
                            f"of every class, each at least 1, but the smallest training class has "
                            f"{counts[present].min()}; use fewer shots or queries")
        self.ways, self.shots, self.queries = ways, shots, queries
        self.draw = episode_drawer(class_codes(codes)[1], ways, per_class)  # codes 0..C-1

    def sample(self, seed, step):
        """The episode of training step ``step`` of a run seeded ``seed`` (see the class docstring)."""
        state = random.getstate()
        random.seed(seed * 1_000_003 + step)
        try:
            grouped = torch.tensor(self.draw())  # [ways, shots + queries], class c = row c
        finally:
            random.setstate(state)
        return grouped.T.reshape(-1), torch.arange(self.ways).repeat(self.shots + self.queries)
