"""UMTRA: its tasks cut by hand, its two meta-learners' losses and gradients against references written
here from the paper's formulas, and its place in the CLI (a meta-learner: no GeSSL around it)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from baselines.umtra import UMTRA, umtra_tasks
from gessl import train
from tasks.common.errors import UserError


def test_tasks_are_contiguous_with_ways_or_one_fewer_classes():
    assert umtra_tasks(7, 3) == [slice(0, 3), slice(3, 5), slice(5, 7)]
    assert umtra_tasks(10, 5) == [slice(0, 5), slice(5, 10)]
    sizes = [s.stop - s.start for s in umtra_tasks(128, 5)]
    assert len(sizes) == 26 and set(sizes) == {4, 5} and sum(sizes) == 128
    with pytest.raises(ValueError, match="at least 2 images"):
        umtra_tasks(3, 2)  # 2 tasks of 2 and 1


def setup(learner, **options):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.BatchNorm1d(6), nn.ReLU()).double()
    method = UMTRA(6, umtra_ways=3, umtra_learner=learner, **options).double()
    g = torch.Generator().manual_seed(1)
    images = torch.rand(7, 1, 4, 4, generator=g, dtype=torch.float64)
    views = [images + 0.2 * torch.randn(images.shape, generator=g, dtype=torch.float64) for _ in range(2)]
    return backbone, method, {"images": images, "views": views}


def features(backbone, batch):
    return backbone(torch.cat([batch["images"], *batch["views"]])).chunk(3)


def cross_entropy(rows, labels):
    """Mean −log softmax(row)_label over plain lists of numbers."""
    return sum(math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(rows, labels)) / len(rows)


def test_proto_loss_is_the_mean_over_tasks_of_the_query_cross_entropy_over_negative_squared_distances():
    backbone, method, batch = setup("proto")
    got = method(backbone, batch).loss.item()
    s, h1, h2 = (t.tolist() for t in features(backbone, batch))
    task_losses = []
    for task in ([0, 1, 2], [3, 4], [5, 6]):
        rows, labels = [], []
        for q in (h1, h2):
            for y, i in enumerate(task):
                rows.append([-sum((a - b) ** 2 for a, b in zip(q[i], s[j])) for j in task])
                labels.append(y)
        task_losses.append(cross_entropy(rows, labels))
    assert got == pytest.approx(sum(task_losses) / 3, rel=1e-12)


def reference_maml(method, s, h1, h2, steps, lr, first_order):
    """The ANIL loss with the head's SGD steps written out: for logits W s + b, ∇_W CE = Gᵀ s and
    ∇_b CE = Σ G with G = (softmax − one-hot) / n."""
    weight, bias = method.head.module.weight, method.head.module.bias
    losses = []
    for task in (slice(0, 3), slice(3, 5), slice(5, 7)):
        support = s[task]
        ways = len(support)
        w, b = weight[:ways], bias[:ways]
        for _ in range(steps):
            g = (torch.softmax(support @ w.T + b, 1) - torch.eye(ways, dtype=s.dtype)) / ways
            if first_order:
                g = g.detach()
            w, b = w - lr * g.T @ (support.detach() if first_order else support), b - lr * g.sum(0)
        queries = torch.cat([h1[task], h2[task]])
        losses.append(F.cross_entropy(queries @ w.T + b, torch.arange(ways).repeat(2)))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_loss_and_gradients_follow_the_head_adapted_on_each_task(first_order):
    backbone, method, batch = setup("maml", maml_inner_steps=2, maml_inner_lr=0.5, maml_first_order=first_order)
    got = method(backbone, batch).loss
    parameters = [*backbone.parameters(), *method.parameters()]
    got_grads = torch.autograd.grad(got, parameters)
    want = reference_maml(method, *features(backbone, batch), 2, 0.5, first_order)
    want_grads = torch.autograd.grad(want, parameters)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_the_inner_steps_change_the_maml_loss():
    # The same backbone, head and batch with 0 and 5 inner steps: adapting the head to the support
    # images must lower the loss of their augmented copies.
    backbone, unadapted, batch = setup("maml", maml_inner_steps=0)
    adapted = setup("maml", maml_inner_steps=5)[1]
    assert adapted(backbone, batch).loss.item() < unadapted(backbone, batch).loss.item() - 1e-3


@pytest.mark.parametrize("flags, message", [
    (["--meta", "gessl"], "itself a meta-learner"),
    (["--meta", "none", "--umtra-ways", "1"], "--umtra-ways must be at least 2"),
    (["--meta", "none", "--umtra-learner", "knn"], "--umtra-learner must be maml or proto"),
    (["--meta", "none", "--batch-size", "3", "--umtra-ways", "2"], "cannot cut a batch of 3 images"),
])
def test_umtra_is_a_meta_learner_and_its_options_are_checked(glyph_root, tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        train.main(["--base", "umtra", *flags, "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()
