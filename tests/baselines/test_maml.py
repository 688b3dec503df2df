"""MAML (head-only, learn2learn's wrapper): the adaptation and the meta-gradient against hand-written
SGD steps on the head, and a short training that lowers the query loss after adaptation."""
import pytest
import torch

from baselines.maml import MAML
from tasks.training.episodes import EpisodeSampler


def episode_batch(ways=3, shots=2, queries=1, dim=4, seed=0):
    """Two views of ``ways`` classes in rounds (support rounds first), as ``tasks.training.episodes`` lays them out."""
    g = torch.Generator().manual_seed(seed)
    n = ways * (shots + queries)
    views = [torch.randn(n, dim, generator=g, dtype=torch.float64) for _ in range(2)]
    return {"views": views, "labels": torch.arange(ways).repeat(shots + queries)}, ways * shots


def reference_maml_loss(backbone, weight, bias, batch, n_support, steps, lr, first_order):
    """K SGD steps on the head with the cross-entropy gradient written out, (softmax − one-hot)ᵀ h / n,
    then the query cross-entropy; with ``first_order`` the inner gradients are constants."""
    h = [backbone(v) for v in batch["views"]]
    y = batch["labels"]
    hs, ys = torch.cat([h[0][:n_support], h[1][:n_support]]), torch.cat([y[:n_support]] * 2)
    hq, yq = torch.cat([h[0][n_support:], h[1][n_support:]]), torch.cat([y[n_support:]] * 2)
    for _ in range(steps):
        residual = torch.softmax(hs @ weight.T + bias, dim=1) - torch.nn.functional.one_hot(ys, len(bias))
        grad_w, grad_b = residual.T @ hs / len(ys), residual.mean(0)
        if first_order:
            grad_w, grad_b = grad_w.detach(), grad_b.detach()
        weight, bias = weight - lr * grad_w, bias - lr * grad_b
    log_p = torch.log_softmax(hq @ weight.T + bias, dim=1)
    return -log_p[torch.arange(len(yq)), yq].mean()


def test_one_adapt_step_of_the_wrapper_is_a_hand_written_sgd_step():
    torch.manual_seed(0)
    method = MAML(4, episode_ways=3, maml_inner_lr=0.3).double()
    batch, n_support = episode_batch()
    h = torch.cat([v[:n_support] for v in batch["views"]])
    y = torch.cat([batch["labels"][:n_support]] * 2)
    learner = method.head.clone()
    learner.adapt(torch.nn.functional.cross_entropy(learner(h), y))
    w, b = method.head.module.weight, method.head.module.bias
    residual = torch.softmax(h @ w.T + b, dim=1) - torch.nn.functional.one_hot(y, 3)
    torch.testing.assert_close(learner.module.weight, w - 0.3 * residual.T @ h / len(y), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(learner.module.bias, b - 0.3 * residual.mean(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("steps, first_order", [(1, False), (3, False), (2, True)])
def test_loss_and_meta_gradient_match_the_hand_written_inner_loop(steps, first_order):
    torch.manual_seed(1)
    backbone = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh()).double()
    method = MAML(5, episode_ways=3, episode_shots=2, episode_queries=1, maml_inner_steps=steps,
                  maml_inner_lr=0.7, maml_first_order=first_order).double()
    batch, n_support = episode_batch()
    out = method(backbone, batch)
    params = [*backbone.parameters(), method.head.module.weight, method.head.module.bias]
    got = torch.autograd.grad(out.loss, params)
    expected_loss = reference_maml_loss(backbone, method.head.module.weight, method.head.module.bias, batch,
                                        n_support, steps, 0.7, first_order)
    expected = torch.autograd.grad(expected_loss, params)
    assert out.loss.item() == pytest.approx(expected_loss.item(), rel=1e-12)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)
    assert out.terms["maml_support_loss"] > 0 and 0 <= out.terms["maml_query_accuracy"] <= 1


def test_more_classes_than_head_outputs_is_a_clear_error():
    batch, _ = episode_batch(ways=4)
    with pytest.raises(ValueError, match="4 classes but the MAML head has 3 outputs"):
        MAML(4, episode_ways=3).double()(torch.nn.Identity(), batch)


def test_short_training_on_fake_classes_lowers_the_query_loss_after_adaptation():
    g = torch.Generator().manual_seed(0)
    classes, per_class, dim = 24, 10, 16
    labels = torch.arange(classes).repeat_interleave(per_class)
    data = torch.randn(classes, dim, generator=g)[labels] + 1.5 * torch.randn(len(labels), dim, generator=g)
    sampler = EpisodeSampler(labels, ways=5, shots=2, queries=3)
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    method = MAML(16, episode_ways=5, episode_shots=2, episode_queries=3, maml_inner_steps=3, maml_inner_lr=0.5)
    optimizer = torch.optim.Adam([*backbone.parameters(), *method.parameters()], lr=3e-3)

    def batch(step):
        index, episode_labels = sampler.sample(seed=0, step=step)
        x = data[index]
        return {"views": [x, x + 0.1 * torch.randn(x.shape, generator=g)], "labels": episode_labels}

    held_out = [batch(10_000 + i) for i in range(20)]

    def query_loss():
        return sum(method(backbone, b).loss.item() for b in held_out) / len(held_out)

    before = query_loss()
    for step in range(80):
        optimizer.zero_grad()
        method(backbone, batch(step)).loss.backward()
        optimizer.step()
    after = query_loss()
    assert after < 0.8 * before, (before, after)
