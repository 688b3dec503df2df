"""ProtoNet: the support/query rule, the loss against a loop reference, and a collapse check."""
import math

import pytest
import torch

from baselines.protonet import ProtoNet, prototypical_loss, support_mask


def test_support_is_the_first_share_of_each_class_in_batch_order():
    labels = torch.tensor([2, 0, 2, 2, 0, 1, 1, 0, 2])
    # class 2 at 0,2,3,8 (2 support); class 0 at 1,4,7 (round(1.5) = 2); class 1 at 5,6 (1)
    assert support_mask(labels, 0.5).tolist() == [1, 1, 1, 0, 1, 1, 0, 0, 0]
    # a share near 1 or 0 still leaves one query and one support per class
    assert support_mask(labels, 0.95).tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 0]
    assert support_mask(labels, 0.05).tolist() == [1, 1, 0, 0, 0, 1, 0, 0, 0]


def test_a_class_with_one_image_is_a_clear_error():
    with pytest.raises(ValueError, match="class 7 has a single image"):
        support_mask(torch.tensor([0, 7, 0, 3, 3]), 0.5)


def reference_protonet(views, labels, share):
    """The loss of a batch by loops: support by counting each class's images in batch order, both
    views of an image in its role, prototypes as means, log-softmax of −squared distances."""
    seen, roles = {}, []
    counts = {c: labels.tolist().count(c) for c in set(labels.tolist())}
    for y in labels.tolist():
        n_support = min(max(math.floor(counts[y] * share + 0.5), 1), counts[y] - 1)
        roles.append(seen.get(y, 0) < n_support)
        seen[y] = seen.get(y, 0) + 1
    rows = [(v[i].tolist(), y, s) for v in views for i, (y, s) in enumerate(zip(labels.tolist(), roles))]
    classes = sorted(counts)
    prototypes = {}
    for c in classes:
        members = [x for x, y, s in rows if y == c and s]
        prototypes[c] = [sum(col) / len(members) for col in zip(*members)]
    total, queries = 0.0, [(x, y) for x, y, s in rows if not s]
    for x, y in queries:
        scores = {c: -sum((a - b) ** 2 for a, b in zip(x, prototypes[c])) for c in classes}
        log_norm = math.log(sum(math.exp(v) for v in scores.values()))
        total -= scores[y] - log_norm
    return total / len(queries)


@pytest.mark.parametrize("shots, queries", [(1, 1), (2, 3)])
def test_loss_matches_the_loop_reference(shots, queries):
    g = torch.Generator().manual_seed(shots)
    labels = torch.tensor([3, 1, 1, 5, 3, 5, 1, 3, 5, 5, 1, 3, 3])  # unordered, unequal class sizes
    views = [0.5 * torch.randn(len(labels), 4, generator=g, dtype=torch.float64) for _ in range(2)]
    out = ProtoNet(4, episode_shots=shots, episode_queries=queries)(torch.nn.Identity(),
                                                                    {"views": views, "labels": labels})
    expected = reference_protonet(views, labels, shots / (shots + queries))
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)
    assert torch.equal(out.projections[0], views[0]) and torch.equal(out.projections[1], views[1])


def test_collapsed_embeddings_score_log_c_and_separated_clusters_score_near_zero():
    classes, per_class = 5, 4
    labels = torch.arange(classes).repeat(per_class)
    support = support_mask(labels, 0.5)
    collapsed = torch.ones(len(labels), 3, dtype=torch.float64)
    loss, _ = prototypical_loss(collapsed, labels, support)
    assert loss.item() == pytest.approx(math.log(classes))  # every prototype at the same distance
    g = torch.Generator().manual_seed(0)
    noise = 0.1 * torch.randn(len(labels), classes, generator=g, dtype=torch.float64)
    clusters = 4 * torch.eye(classes, dtype=torch.float64)[labels] + noise
    loss, accuracy = prototypical_loss(clusters, labels, support)
    assert loss.item() < 0.01 and accuracy.item() == 1.0
