"""The supervised reference: cross-entropy (cosine and linear classifiers) against a reference
written here, projections, collapse."""
import math

import pytest
import torch

from baselines.supervised import Supervised


def reference_cross_entropy(h, labels, weight, bias=None, scale=0.0):
    """−mean_n log softmax(ℓ(h_n))_{y_n} by loops, ℓ_k = s·cos(h, w_k), or w_k·h + b_k when s = 0."""
    total = 0.0
    for row, y in zip(h.tolist(), labels.tolist()):
        logits = []
        for k, w_row in enumerate(weight.tolist()):
            dot = sum(w * x for w, x in zip(w_row, row))
            if scale:
                logits.append(scale * dot / math.sqrt(sum(w * w for w in w_row) * sum(x * x for x in row)))
            else:
                logits.append(dot + bias[k].item())
        top = max(logits)
        log_norm = top + math.log(sum(math.exp(v - top) for v in logits))
        total += log_norm - logits[y]
    return total / len(labels)


def batch_of(n=10, side=3, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, side, side, generator=g, dtype=torch.float64)
    views = [x + 0.3 * torch.randn(x.shape, generator=g, dtype=x.dtype) for _ in range(2)]
    return {"images": x, "views": views, "labels": torch.randint(classes, (n,), generator=g)}


@pytest.mark.parametrize("scale", [0.0, 5.0, 0.7])
def test_loss_is_the_cross_entropy_of_both_views_and_projections_are_the_features(scale):
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 6)).double()
    method = Supervised(6, num_classes=4, supervised_scale=scale).double()
    assert (method.classifier.bias is None) == (scale != 0)
    batch = batch_of()
    out = method(backbone, batch)
    h1, h2 = (backbone(v) for v in batch["views"])
    expected = reference_cross_entropy(torch.cat([h1, h2]), torch.cat([batch["labels"]] * 2),
                                       method.classifier.weight, method.classifier.bias, scale)
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)
    assert method.proj_dim == 6
    torch.testing.assert_close(out.projections[0], h1)
    torch.testing.assert_close(out.projections[1], h2)


def test_missing_labels_say_what_is_missing():
    batch = batch_of()
    del batch["labels"]
    with pytest.raises(ValueError, match="labels"):
        Supervised(9, num_classes=4).double()(torch.nn.Flatten(), batch)


@pytest.mark.parametrize("scale", [0.0, 5.0])
def test_collapsed_features_cannot_beat_log_c_while_separated_ones_do(scale):
    """Constant features give every image the same prediction p: on balanced labels the loss is
    −(1/C) Σ_k log p_k ≥ log C (Gibbs), whatever the classifier."""
    classes, per_class = 4, 8
    labels = torch.arange(classes).repeat(per_class)
    collapsed = {"views": [torch.ones(len(labels), classes, dtype=torch.float64)] * 2, "labels": labels}
    for seed in range(3):
        torch.manual_seed(seed)
        method = Supervised(classes, num_classes=classes, supervised_scale=scale).double()
        assert method(torch.nn.Identity(), collapsed).loss.item() >= math.log(classes) - 1e-12
    with torch.no_grad():
        method.classifier.weight.copy_(torch.eye(classes))
        if method.classifier.bias is not None:
            method.classifier.bias.zero_()
    separated = {"views": [5.0 * torch.eye(classes, dtype=torch.float64)[labels]] * 2, "labels": labels}
    assert method(torch.nn.Identity(), separated).loss.item() < 0.1 < math.log(classes)
