"""Crowding metrics against loops written here, and their order on constructed clusters."""
import itertools

import pytest
import torch

from tasks.common.errors import UserError
from tasks.evaluation.crowding import crowding_metrics


def reference(features, labels):
    """V, S, V/S² and the crowded share with loops over classes and samples."""
    h = [f / f.norm() for f in features.double()]
    classes = sorted(set(labels.tolist()))
    members = {c: [i for i, y in enumerate(labels.tolist()) if y == c] for c in classes}
    centroid = {c: sum(h[i] for i in members[c]) / len(members[c]) for c in classes}
    intra = sum(sum(float((h[i] - centroid[c]) @ (h[i] - centroid[c])) for i in members[c]) / len(members[c])
                for c in classes) / len(classes)
    pairs = list(itertools.combinations(classes, 2))
    inter = sum(float((centroid[a] - centroid[b]).norm()) for a, b in pairs) / len(pairs)
    crowded = []
    for c in classes:
        near = [min(float((h[i] - centroid[o]).norm()) for o in classes if o != c) < float((h[i] - centroid[c]).norm())
                for i in members[c]]
        crowded.append(sum(near) / len(near))
    return intra, inter, intra / inter ** 2, sum(crowded) / len(crowded)


def clusters(spread, n_classes=6, per_class=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, 16, generator=g)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return centres[labels] + spread * torch.randn(len(labels), 16, generator=g), labels


def test_metrics_match_the_loop_reference_with_unequal_classes():
    features, labels = clusters(1.0)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[:7] = False  # class 0 keeps 8 of its 15 samples
    got = crowding_metrics(features[keep], labels[keep] * 3 + 1)  # labels need not be 0..C-1
    want = reference(features[keep], labels[keep])
    names = ["intra_class_variance", "inter_class_separation", "crowding_ratio", "crowded_share"]
    for name, value in zip(names, want):
        assert got[name][0] == pytest.approx(value, rel=1e-9)


def test_jackknife_interval_of_the_separation_matches_leaving_classes_out():
    features, labels = clusters(0.8, n_classes=5)
    values = [reference(features[labels != c], labels[labels != c])[1] for c in range(5)]
    mean = sum(values) / 5
    expected = 1.96 * (4 / 5 * sum((v - mean) ** 2 for v in values)) ** 0.5
    assert crowding_metrics(features, labels)["inter_class_separation"][1] == pytest.approx(expected, rel=1e-9)


def test_separated_clusters_score_less_crowded_than_overlapping_ones():
    tight, loose = crowding_metrics(*clusters(0.1)), crowding_metrics(*clusters(3.0))
    assert tight["intra_class_variance"][0] < loose["intra_class_variance"][0]
    assert tight["inter_class_separation"][0] > loose["inter_class_separation"][0]
    assert tight["crowding_ratio"][0] < 0.1 * loose["crowding_ratio"][0]
    assert tight["crowded_share"][0] == 0 and loose["crowded_share"][0] > 0.2


def test_fewer_than_three_classes_is_a_user_error():
    features, labels = clusters(1.0, n_classes=2)
    with pytest.raises(UserError, match="at least 3 classes"):
        crowding_metrics(features, labels)
