"""Logistic regression, linear probe and kNN against references written here (scipy, loops)."""
import numpy as np
import pytest
import scipy.optimize
import torch

from tasks.evaluation.fewshot import evaluate_fewshot
from tasks.evaluation.linear import fit_logreg, knn_accuracy, linear_probe, logreg_logits


def reference_logreg(x, y, classes, c_reg, weights=None):
    """scipy's L-BFGS-B on Σ ω_i CE + ‖W‖² / 2C, written out in numpy; returns the posteriors of x."""
    n, d = x.shape
    weights = np.ones(n) if weights is None else weights

    def objective(flat):
        w, b = flat[:classes * d].reshape(classes, d), flat[classes * d:]
        logits = x @ w.T + b
        logits = logits - logits.max(1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        p = np.exp(log_p)
        loss = -(weights * log_p[np.arange(n), y]).sum() + (w ** 2).sum() / (2 * c_reg)
        g_logits = weights[:, None] * (p - np.eye(classes)[y])
        grad = np.concatenate([(g_logits.T @ x + w / c_reg).ravel(), g_logits.sum(0)])
        return loss, grad

    res = scipy.optimize.minimize(objective, np.zeros(classes * (d + 1)), jac=True, method="L-BFGS-B",
                                  options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 5000})
    w, b = res.x[:classes * d].reshape(classes, d), res.x[classes * d:]
    return w, b


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("c_reg", [0.1, 1.0, 10.0])
def test_logreg_matches_a_reference_solver_on_each_problem(c_reg):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 12, 4, generator=g, dtype=torch.float64)
    y = torch.randint(3, (3, 12), generator=g)
    references = [reference_logreg(x[e].numpy(), y[e].numpy(), 3, c_reg) for e in range(3)]
    for tolerance, atol in ((1e-9, 2e-6), (None, 1e-5)):  # tight, then the default gradient tolerance
        w, b = fit_logreg(x, y, 3, c_reg, **({"tolerance": tolerance, "max_iter": 1000} if tolerance else {}))
        for e, (w_ref, b_ref) in enumerate(references):
            np.testing.assert_allclose(w[e].numpy(), w_ref, atol=10 * atol)
            np.testing.assert_allclose(softmax((x[e] @ w[e].T + b[e]).numpy()),
                                       softmax(x[e].numpy() @ w_ref.T + b_ref), atol=atol)


def test_zero_weight_samples_are_ignored():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(1, 10, 3, generator=g, dtype=torch.float64), torch.randint(2, (1, 10), generator=g)
    weights = torch.tensor([[1.0] * 6 + [0.0] * 4])
    w, _ = fit_logreg(x, y, 2, 1.0, weights=weights)
    w_ref, _ = reference_logreg(x[0, :6].numpy(), y[0, :6].numpy(), 2, 1.0)
    np.testing.assert_allclose(w[0].numpy(), w_ref, atol=1e-5)


def test_logreg_episode_classifier_one_episode_equals_the_batch_and_beats_chance():
    g = torch.Generator().manual_seed(2)
    centres = 3 * torch.randn(20, 16, generator=g)
    labels = np.repeat(np.arange(20), 20)
    features = centres[labels] + torch.randn(400, 16, generator=g)
    support, query = torch.randn(2, 5, 16, generator=g), torch.randn(2, 7, 16, generator=g)
    support_y = torch.arange(5).expand(2, -1)
    batch = logreg_logits(support, support_y, query, 5)
    torch.testing.assert_close(logreg_logits(support[1], support_y[1], query[1], 5), batch[1], atol=1e-5, rtol=1e-5)
    assert evaluate_fewshot(features, labels, 5, 1, 5, 50, classifier="logreg")["mean"] > 80


def test_knn_matches_a_loop_reference():
    g = torch.Generator().manual_seed(3)
    train_x, test_x = torch.randn(30, 5, generator=g), torch.randn(12, 5, generator=g)
    train_y, test_y = torch.randint(4, (30,), generator=g), torch.randint(4, (12,), generator=g)
    for k in (1, 7, 50):
        correct = 0
        for x, y in zip(test_x, test_y):
            cos = [float(x @ t / (x.norm() * t.norm())) for t in train_x]
            nearest = sorted(range(30), key=lambda i: -cos[i])[:min(k, 30)]
            votes = [sum(np.exp(cos[i] / 0.1) for i in nearest if train_y[i] == c) for c in range(4)]
            correct += int(np.argmax(votes) == y)
        assert knn_accuracy(train_x, train_y, test_x, test_y, k=k, temperature=0.1, chunk=5) == pytest.approx(
            100 * correct / 12)


def test_linear_probe_picks_the_best_validated_strength_and_learns_separable_classes():
    g = torch.Generator().manual_seed(4)
    centres = torch.randn(4, 8, generator=g)
    train_y, test_y = torch.randint(4, (200,), generator=g), torch.randint(4, (100,), generator=g)
    train_x = centres[train_y] + 0.3 * torch.randn(200, 8, generator=g)
    test_x = centres[test_y] + 0.3 * torch.randn(100, 8, generator=g)
    result = linear_probe(train_x, train_y, test_x, test_y, grid=(1e-4, 1.0, 100.0))
    assert result["validation_accuracy"][result["c_reg"]] == max(result["validation_accuracy"].values())
    assert result["validation_accuracy"][1e-4] < result["validation_accuracy"][result["c_reg"]]
    assert result["accuracy"] > 90
    noise = linear_probe(torch.randn(200, 8, generator=g), train_y, torch.randn(100, 8, generator=g), test_y)
    assert noise["accuracy"] < 45  # features unrelated to the labels: near chance (25 %)
