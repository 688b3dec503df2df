"""Few-shot episodes (learn2learn samplers), the prototype classifier and the accuracy interval,
against plain references written here."""
import random

import numpy as np
import pytest
import torch
from learn2learn.data import MetaDataset, Taskset
from learn2learn.data.transforms import FusedNWaysKShots, LoadData, RemapLabels

from tasks.common.errors import UserError
from tasks.evaluation.fewshot import IndexDataset, embed, evaluate_fewshot, mean_ci95, paired, prototype_logits, sample_episodes


def labels_of(classes=12, per_class=10):
    return np.repeat(np.arange(classes), per_class)


def test_episodes_have_distinct_classes_disjoint_sets_and_class_blocks():
    labels = labels_of()
    episodes = sample_episodes(labels, ways=5, shots=2, queries=3, episodes=50, seed=0)
    orders = set()
    for support, query in episodes:
        assert len(support) == 10 and len(query) == 15
        assert not set(support.tolist()) & set(query.tolist())
        s_cls, q_cls = labels[support].reshape(5, 2), labels[query].reshape(5, 3)
        assert (s_cls == s_cls[:, :1]).all() and (q_cls == s_cls[:, :1]).all()
        assert len(set(s_cls[:, 0])) == 5
        orders.add(tuple(s_cls[:, 0]))
    assert any(list(o) != sorted(o) for o in orders)  # the class order within an episode is random


def test_episodes_depend_only_on_the_seed_and_leave_python_random_alone():
    labels = labels_of()
    random.seed(123)
    state = random.getstate()
    a = sample_episodes(labels, 5, 1, 4, 20, seed=7)
    assert random.getstate() == state
    b = sample_episodes(labels, 5, 1, 4, 20, seed=7)
    c = sample_episodes(labels, 5, 1, 4, 20, seed=8)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert any(not torch.equal(x[0], y[0]) for x, y in zip(a, c))


def test_episodes_are_those_of_the_full_learn2learn_pipeline():
    """The draw skips LoadData and RemapLabels: every episode must still be the one that learn2learn's
    full Taskset draws from the same seed, with its classes in the same label order and the same
    support and query images per class (RemapLabels' shuffle draws random numbers too)."""
    labels = labels_of(classes=9, per_class=7)
    dataset = MetaDataset(IndexDataset(labels))
    taskset = Taskset(dataset, [FusedNWaysKShots(dataset, n=4, k=5), LoadData(dataset), RemapLabels(dataset)],
                      num_tasks=30)
    random.seed(3)
    full = [taskset[i] for i in range(30)]
    for (support, query), (x, y) in zip(sample_episodes(labels, 4, 2, 3, 30, seed=3), full):
        want = {}
        for i, c in zip(x.tolist(), y.tolist()):  # per class: its images in the order drawn
            want.setdefault(c, []).append(i)
        got = [s + q for s, q in zip(support.view(4, 2).tolist(), query.view(4, 3).tolist())]
        assert got == [want[k] for k in range(4)]  # row k: class labelled k, its first 2 images the support


def test_every_class_is_drawn_about_equally_and_string_labels_work():
    labels = np.array([f"c{i}" for i in labels_of(classes=8, per_class=6)])
    counts = {}
    for support, _ in sample_episodes(labels, 4, 1, 2, 400, seed=1):
        for c in labels[support]:
            counts[c] = counts.get(c, 0) + 1
    assert len(counts) == 8 and min(counts.values()) > 0.7 * 200  # 400 * 4 / 8 = 200 each on average


def reference_prototype_logits(support, support_y, query, ways, normalize):
    if normalize:
        support, query = support / support.norm(dim=1, keepdim=True), query / query.norm(dim=1, keepdim=True)
    logits = torch.empty(len(query), ways, dtype=query.dtype)
    for k in range(ways):
        centre = support[support_y == k].mean(0)
        for i, q in enumerate(query):
            logits[i, k] = -((q - centre) ** 2).sum()
    return logits


@pytest.mark.parametrize("normalize", [True, False])
def test_prototype_logits_match_a_loop_for_one_and_many_episodes(normalize):
    g = torch.Generator().manual_seed(0)
    support, query = torch.randn(3, 6, 4, generator=g, dtype=torch.float64), torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    support_y = torch.tensor([0, 0, 1, 1, 2, 2]).expand(3, -1)
    batched = prototype_logits(support, support_y, query, 3, normalize=normalize)
    for e in range(3):
        expected = reference_prototype_logits(support[e], support_y[e], query[e], 3, normalize)
        torch.testing.assert_close(batched[e], expected)
        torch.testing.assert_close(prototype_logits(support[e], support_y[e], query[e], 3, normalize=normalize), expected)


def test_mean_ci95_formula():
    values = np.array([50.0, 60.0, 70.0, 65.0])
    mean, ci = mean_ci95(values)
    assert mean == pytest.approx(61.25)
    assert ci == pytest.approx(1.96 * np.sqrt(((values - 61.25) ** 2).sum() / 3) / 2)
    assert np.isnan(mean_ci95([3.0])[1])
    with pytest.raises(ValueError):
        mean_ci95([])


def test_accuracy_is_perfect_on_separable_features_and_chance_on_noise():
    labels = labels_of(classes=20, per_class=12)
    g = torch.Generator().manual_seed(0)
    separable = torch.eye(20)[labels] + 0.01 * torch.randn(len(labels), 20, generator=g)
    result = evaluate_fewshot(separable, labels, ways=5, shots=1, queries=5, episodes=100, seed=0)
    assert result["mean"] == 100.0 and len(result["accuracies"]) == 100
    noise = torch.randn(len(labels), 32, generator=g)
    result = evaluate_fewshot(noise, labels, ways=5, shots=1, queries=5, episodes=400, seed=0)
    assert abs(result["mean"] - 20.0) < 3 * result["ci95"] + 1


def test_accuracies_equal_a_per_episode_reference_on_the_same_episodes():
    labels = labels_of(classes=10, per_class=8)
    features = torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(3))
    result = evaluate_fewshot(features, labels, ways=4, shots=2, queries=3, episodes=30, seed=5)
    expected = []
    for support, query in sample_episodes(labels, 4, 2, 3, 30, seed=5):
        logits = reference_prototype_logits(features[support], torch.arange(4).repeat_interleave(2),
                                            features[query], 4, normalize=True)
        expected.append(100 * (logits.argmax(1) == torch.arange(4).repeat_interleave(3)).double().mean().item())
    np.testing.assert_allclose(result["accuracies"], expected)
    again = evaluate_fewshot(features, labels, ways=4, shots=2, queries=3, episodes=30, seed=5)
    np.testing.assert_array_equal(again["accuracies"], result["accuracies"])


@pytest.mark.parametrize("kwargs, message", [
    ({"ways": 13}, "--ways 12 or fewer"),
    ({"ways": 1}, "--ways 2 or more"),
    ({"shots": 6, "queries": 5}, "--shots and --queries"),
    ({"episodes": 0}, "--episodes must be at least 1"),
    ({"classifier": "svm"}, "unknown classifier"),
])
def test_impossible_requests_are_user_errors(kwargs, message):
    options = {"ways": 5, "shots": 1, "queries": 5, "episodes": 10, **kwargs}
    with pytest.raises(UserError, match=message):
        evaluate_fewshot(torch.randn(120, 4), labels_of(), **options)


class Recorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(1)
        self.seen_training = []

    def forward(self, x):
        self.seen_training.append(self.training)
        return x.flatten(1) * 2


def test_embed_scales_adds_channel_batches_in_order_and_leaves_the_module_as_it_was():
    images = torch.randint(0, 256, (10, 3, 3), dtype=torch.uint8)
    net = Recorder().train()
    with torch.no_grad():
        net.norm.running_mean.fill_(0.25)
        net.norm.running_var.fill_(4.0)
    features = embed(net, images, batch_size=4)
    torch.testing.assert_close(features, images.float().flatten(1) / 255 * 2)
    assert net.seen_training == [] and net.training and net.norm.training  # a copy ran
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3)).train()
    with torch.no_grad():
        conv[1].running_mean.uniform_(-1, 1)
        conv[1].running_var.uniform_(0.5, 2)
    expected = conv.eval()(images[:, None].float() / 255).flatten(1)  # eval mode: running statistics
    conv.train()
    batchnorm_calls = []
    conv[1].register_forward_hook(lambda *args: batchnorm_calls.append(1))  # deepcopy keeps the hook
    torch.testing.assert_close(embed(conv, images, batch_size=3), expected)
    assert not batchnorm_calls  # the BatchNorm ran folded into the convolution
    assert conv.training and conv[0].weight.is_contiguous()
    with pytest.raises(TypeError):
        embed(net, images.float())
    with pytest.raises(UserError, match="empty"):
        embed(net, images[:0])


def test_paired_differences_use_only_settings_both_hold_with_as_many_episodes():
    a = {"x": [50.0, 60.0, 70.0], "y": [10.0, 20.0], "only-a": [1.0]}
    b = {"x": [40.0, 60.0, 65.0], "y": [10.0], "only-b": [2.0]}
    (setting, stats), = paired(a, b)
    diff = np.array([10.0, 0.0, 5.0])
    assert setting == "x" and stats["n"] == 3
    assert stats["difference"] == pytest.approx(5.0) and stats["mean_a"] == 60 and stats["mean_b"] == 55
    assert stats["ci95"] == pytest.approx(1.96 * diff.std(ddof=1) / np.sqrt(3))
