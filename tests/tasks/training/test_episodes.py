"""Training episodes: ways, shots and queries, remapped labels and their layout, seeding, errors."""
import random

import numpy as np
import pytest
import torch

from baselines.protonet import support_mask
from tasks.common.errors import UserError
from tasks.training.episodes import EpisodeSampler

LABELS = np.repeat(np.arange(12), 7)[np.random.default_rng(0).permutation(84)]  # 12 classes of 7, shuffled


def test_episode_has_ways_classes_of_shots_plus_queries_distinct_images_in_rounds():
    sampler = EpisodeSampler(LABELS, ways=5, shots=2, queries=3)
    for step in range(20):
        index, labels = sampler.sample(seed=0, step=step)
        assert len(index) == 25 and len(set(index.tolist())) == 25
        assert labels.tolist() == list(range(5)) * 5  # round r holds image r of classes 0..4
        rounds = LABELS[index.numpy()].reshape(5, 5)  # [round, episode class]: the dataset's classes
        assert (rounds == rounds[0]).all() and len(set(rounds[0])) == 5


def test_the_support_rule_of_the_episodic_losses_takes_the_first_shots_rounds():
    sampler = EpisodeSampler(LABELS, ways=4, shots=2, queries=3)
    _, labels = sampler.sample(seed=0, step=0)
    assert support_mask(labels, 2 / 5).tolist() == [True] * 8 + [False] * 12


def test_episodes_depend_on_seed_and_step_only_and_leave_python_random_alone():
    a = EpisodeSampler(LABELS, 5, 1, 2)
    b = EpisodeSampler(LABELS, 5, 1, 2)
    random.seed(123)
    state = random.getstate()
    first = a.sample(seed=3, step=10)
    assert random.getstate() == state
    assert all(torch.equal(x, y) for x, y in zip(first, b.sample(seed=3, step=10)))
    assert not torch.equal(first[0], a.sample(seed=3, step=11)[0])
    assert not torch.equal(first[0], a.sample(seed=4, step=10)[0])


def test_classes_are_drawn_about_equally():
    sampler = EpisodeSampler(LABELS, 3, 1, 1)
    counts = np.bincount(np.concatenate([LABELS[sampler.sample(0, s)[0].numpy()] for s in range(400)]), minlength=12)
    assert counts.min() > 0.7 * counts.mean()  # each class in 400 * 3 / 12 = 100 episodes on average


@pytest.mark.parametrize("ways, shots, queries, message", [
    (1, 1, 1, "--episode-ways 1"),
    (13, 1, 1, "training split has 12"),
    (3, 4, 4, "smallest training class has 7"),
    (3, 0, 2, "--episode-shots 0"),
])
def test_impossible_episodes_are_user_errors(ways, shots, queries, message):
    with pytest.raises(UserError, match=message):
        EpisodeSampler(LABELS, ways, shots, queries)
