"""σ universality score against a per-episode reference, and its zero when few-shot = task-optimal."""
import numpy as np
import pytest
import torch

from tasks.evaluation.fewshot import sample_episodes
from tasks.evaluation.linear import fit_logreg
from tasks.evaluation.linear import LOGREG_C
from tasks.evaluation.universality import _members_by_class, overall_score, sigma_scores
from tests.tasks.evaluation.test_linear import reference_logreg, softmax


def clustered(classes, per_class, dim, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    labels = np.repeat(np.arange(classes), per_class)
    return torch.randn(classes, dim, generator=g)[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


def test_sigma_matches_a_per_episode_reference():
    features, labels = clustered(6, 8, 4, seed=0)
    features[labels == 5] = features[labels == 5][:5].repeat(2, 1)[:8]  # uneven-looking data is fine
    ways, shots, queries, episodes = 3, 2, 3, 5
    got = sigma_scores(features, labels, ways, shots, queries, episodes, seed=1, classifier="proto")
    unit = features / features.norm(dim=1, keepdim=True)
    for e, (support, query) in enumerate(sample_episodes(labels, ways, shots, queries, episodes, seed=1)):
        classes = [labels[int(i)] for i in support[::shots]]
        rest = [i for c in classes for i in np.flatnonzero(labels == c) if i not in set(query.tolist())]
        rest_y = torch.tensor([classes.index(labels[i]) for i in rest])
        w, b = fit_logreg(unit[rest][None].double(), rest_y[None], ways, 1.0)
        q = unit[query].double()
        p_opt = torch.softmax(q @ w[0].T + b[0], 1)
        prototypes = torch.stack([unit[support[k * shots:(k + 1) * shots]].mean(0) for k in range(ways)]).double()
        p_few = torch.softmax(-torch.cdist(q, prototypes) ** 2, 1)
        want = float((p_opt * (p_opt.log() - p_few.log())).sum(1).mean())
        assert got[e] == pytest.approx(want, rel=1e-4, abs=1e-7)


def test_sigma_of_the_logreg_classifier_matches_an_independent_solver():
    # Both posteriors from scipy (tests.tasks.evaluation.test_linear), not from the solver under test: a
    # broken solver, a wrong pool for the task-optimal model or a KL of a posterior with itself fails.
    features, labels = clustered(6, 10, 5, seed=3, spread=1.5)
    ways, shots, queries, episodes = 3, 2, 3, 4
    got = sigma_scores(features, labels, ways, shots, queries, episodes, seed=2, classifier="logreg")
    unit = (features / features.norm(dim=1, keepdim=True)).double().numpy()
    for e, (support, query) in enumerate(sample_episodes(labels, ways, shots, queries, episodes, seed=2)):
        classes = [labels[int(i)] for i in support[::shots]]
        rest = [i for c in classes for i in np.flatnonzero(labels == c) if i not in set(query.tolist())]
        rest_y = np.array([classes.index(labels[i]) for i in rest])
        q = unit[query.numpy()]
        p_opt = softmax(q @ (fit := reference_logreg(unit[rest], rest_y, ways, LOGREG_C))[0].T + fit[1])
        few = reference_logreg(unit[support.numpy()], np.arange(ways).repeat(shots), ways, LOGREG_C)
        p_few = softmax(q @ few[0].T + few[1])
        want = float((p_opt * (np.log(p_opt) - np.log(p_few))).sum(1).mean())
        assert want > 1e-3 and got[e] == pytest.approx(want, rel=1e-3)


def test_sigma_is_zero_when_the_few_shot_classifier_is_the_task_optimal_one():
    # every class has shots + queries samples: the task-optimal model sees exactly the shots
    features, labels = clustered(8, 5, 6, seed=2)
    sigma = sigma_scores(features, labels, 4, 2, 3, 20, seed=0, classifier="logreg")
    assert np.abs(sigma).max() < 1e-6
    # with more labelled examples than shots, the prototype classifier is not task-optimal
    features, labels = clustered(8, 12, 6, seed=2)
    assert sigma_scores(features, labels, 4, 1, 3, 20, seed=0, classifier="proto").min() > 1e-3


def test_members_by_class_and_overall_score():
    codes = torch.tensor([2, 0, 2, 1, 2, 0])
    table = _members_by_class(codes)
    assert table.tolist() == [[1, 5, -1], [3, -1, -1], [0, 2, 4]]
    mean, half = overall_score({"a": (1.0, 0.3), "b": (3.0, 0.4)})
    assert mean == 2.0 and half == pytest.approx(0.25)
