"""GeSSL's step with its shared passes against a reference of the step that runs every pass on its
own, and ``inner_params="head"`` against finite differences and against the full-parameter path on
a frozen backbone; toy base method and model of ``test_bilevel`` (BatchNorm, a queue buffer, a
frozen EMA-like copy), in float64."""
import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from gessl.bilevel import GeSSL
from gessl.inner_loop import take, trainable
from gessl.shares import support_size, task_slices
from gessl.train import SSLModel, parse_args, prepare_run
from tasks.common.errors import UserError
from tests.gessl.test_bilevel import ALPHA, TAU, ToyMethod, halves, reference_log_posteriors, toy_batch, toy_model


def clone_buffers(module):
    return {n: b.clone() for n, b in module.named_buffers()}


def separate_passes_step(model, batch, steps, look, first_order, outer_set, tasks, sigma_weight=4.0, gamma=1.0):
    """The step with every pass of its own, into ``.grad``: per task, K SGD steps on S (scratch
    buffers), λ look-ahead steps on S ∪ Q from θ_K (scratch buffers, detached), the target's
    posteriors on O (scratch buffers), then the outer forward on O (the model's buffers) and backward."""
    theta = trainable(model)
    for index in task_slices(len(batch["views"][0]), tasks):
        task = take(batch, index)
        n_support = support_size(index.stop - index.start, 0.5)
        support = take(task, slice(0, n_support))
        outer = take(task, slice(n_support, None)) if outer_set == "query" else task
        fast, buffers = dict(theta), clone_buffers(model)
        for _ in range(steps):
            loss = functional_call(model, (fast, buffers), (support,)).loss
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order, allow_unused=True)
            fast = {n: p if g is None else p - ALPHA * (g.detach() if first_order else g)
                    for (n, p), g in zip(fast.items(), grads)}
        target, buffers = {n: p.detach().requires_grad_() for n, p in fast.items()}, clone_buffers(model)
        for _ in range(look):
            loss = functional_call(model, (target, buffers), (task,)).loss
            grads = torch.autograd.grad(loss, list(target.values()), allow_unused=True)
            target = {n: (p if g is None else p - ALPHA * g).detach().requires_grad_()
                      for (n, p), g in zip(target.items(), grads)}
        with torch.no_grad():
            target_log_p = reference_log_posteriors(
                *functional_call(model, (target, clone_buffers(model)), (outer,)).projections, TAU)
        out = functional_call(model, fast, (outer,))
        log_p = reference_log_posteriors(*out.projections, TAU)
        sigma = (target_log_p.exp() * (target_log_p - log_p)).sum(1).mean()
        ((sigma_weight * sigma + gamma * out.loss) / tasks).backward()


def step(model, batch, **options):
    options.setdefault("inner_params", "all")  # the reference's path, unless a test names another
    model.zero_grad(set_to_none=True)
    logs = GeSSL(inner_lr=ALPHA, sigma_temperature=TAU, **options).compute_gradients(model, batch, diagnose=True)
    return logs, {n: p.grad.clone() for n, p in trainable(model).items()}


@pytest.mark.parametrize("engine", ["higher", "func"])
@pytest.mark.parametrize("first_order, look, outer_set, tasks", [
    (False, 1, "task", 1), (False, 2, "task", 2), (True, 1, "task", 1), (True, 2, "task", 1),
    (False, 1, "query", 2), (True, 0, "task", 1)])
def test_shared_passes_give_the_meta_gradient_and_buffers_of_separate_passes(engine, first_order, look, outer_set,
                                                                              tasks):
    model, batch = toy_model(), toy_batch()
    reference = copy.deepcopy(model)
    separate_passes_step(reference, batch, 2, look, first_order, outer_set, tasks)
    _, grads = step(model, batch, inner_steps=2, lookahead=look, first_order=first_order, outer_set=outer_set,
                    tasks_per_step=tasks, inner_backend=engine)
    for n, p in trainable(reference).items():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-6, atol=1e-9)
    # the BatchNorm running statistics and the queue: as the separate passes leave them (the outer forward's alone)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def head_split(theta):
    """θ by part: the backbone's and the method's parameters, their names without the part's prefix."""
    return ({n.removeprefix("backbone."): p for n, p in theta.items() if n.startswith("backbone.")},
            {n.removeprefix("method."): p for n, p in theta.items() if n.startswith("method.")})


def head_outer(model, theta, target_log_p, batch, steps, look=0, sigma_weight=2.0, gamma=1.0):
    """The head-only outer loss w_σ σ + γ L(φ_K; O) with O = S ∪ Q, written out: features
    h = f_θb(both views) from one pass, φ_K = K SGD steps of the method on h_S from φ. With
    ``target_log_p`` None it also returns the target posteriors of ``look`` look-ahead steps."""
    backbone, head = head_split(theta)
    views = batch["views"]
    h = functional_call(model.backbone, (backbone, clone_buffers(model.backbone)), (torch.cat(views),))
    features = {"views": list(h.split([len(v) for v in views]))}
    support, buffers = halves(features)[0], clone_buffers(model.method)
    for _ in range(steps):
        loss = functional_call(model.method, (head, buffers), (nn.Identity(), support)).loss
        grads = torch.autograd.grad(loss, list(head.values()), create_graph=True)
        head = {n: p - ALPHA * g for (n, p), g in zip(head.items(), grads)}
    if target_log_p is None:
        target = {n: p.detach().requires_grad_() for n, p in head.items()}
        detached = {"views": [v.detach() for v in features["views"]]}
        for _ in range(look):
            loss = functional_call(model.method, (target, clone_buffers(model.method)), (nn.Identity(), detached)).loss
            grads = torch.autograd.grad(loss, list(target.values()))
            target = {n: (p - ALPHA * g).detach().requires_grad_() for (n, p), g in zip(target.items(), grads)}
        with torch.no_grad():
            out = functional_call(model.method, (target, clone_buffers(model.method)), (nn.Identity(), detached))
            return reference_log_posteriors(*out.projections, TAU)
    out = functional_call(model.method, (head, buffers), (nn.Identity(), features))
    log_p = reference_log_posteriors(*out.projections, TAU)
    sigma = (target_log_p.exp() * (target_log_p - log_p)).sum(1).mean()
    return sigma_weight * sigma + gamma * out.loss, sigma


@pytest.mark.parametrize("engine, steps, look", [("higher", 1, 1), ("func", 1, 1), ("higher", 2, 2), ("func", 2, 0)])
def test_head_meta_gradient_matches_finite_differences_on_backbone_and_head(engine, steps, look):
    model, batch = toy_model(), toy_batch()
    logs, grads = step(copy.deepcopy(model), batch, inner_steps=steps, lookahead=look, inner_backend=engine,
                       inner_params="head", sigma_weight=2.0, outer_set="task")
    theta = {n: p.detach().requires_grad_() for n, p in trainable(model).items()}
    target_log_p = head_outer(model, theta, None, batch, steps, look)
    loss, sigma = head_outer(model, theta, target_log_p, batch, steps)
    assert logs["loss"] == pytest.approx(loss.item(), rel=1e-9)
    assert logs["sigma_kl"] == pytest.approx(sigma.item(), rel=1e-7, abs=1e-12)
    g = torch.Generator().manual_seed(3)
    for part in ("backbone.", "method.", ""):  # the backbone's parameters alone, the head's alone, all
        v = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) * n.startswith(part) for n, p in theta.items()}
        eps = 1e-6
        plus, minus = (head_outer(model, {n: theta[n] + sign * eps * v[n] for n in theta}, target_log_p, batch,
                                  steps)[0] for sign in (1, -1))
        numeric = (plus - minus).item() / (2 * eps)
        analytic = sum((grads[n] * v[n]).sum() for n in theta).item()
        assert abs(numeric) > 1e-4  # the direction moves the loss
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def frozen_backbone_model():
    """A toy model whose backbone (no BatchNorm: its features do not depend on the batch they are
    computed in) is frozen, so that the full-parameter path adapts the head alone."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 6)).requires_grad_(False)
    return SSLModel(backbone, ToyMethod()).double().train()


@pytest.mark.parametrize("engine", ["higher", "func"])
@pytest.mark.parametrize("first_order, outer_set", [(False, "task"), (True, "task"), (False, "query")])
def test_head_equals_the_full_path_when_the_backbone_is_frozen(engine, first_order, outer_set):
    model, batch = frozen_backbone_model(), toy_batch()
    options = {"inner_steps": 2, "lookahead": 2, "first_order": first_order, "outer_set": outer_set,
               "inner_backend": engine}
    full_logs, full = step(copy.deepcopy(model), batch, **options)
    head_logs, head = step(copy.deepcopy(model), batch, inner_params="head", **options)
    assert full.keys() == head.keys() == {n for n, _ in model.named_parameters() if n.startswith("method.projector")}
    for n in full:
        torch.testing.assert_close(head[n], full[n], rtol=1e-9, atol=1e-12)
    assert head_logs["loss"] == pytest.approx(full_logs["loss"].item(), rel=1e-10)


@pytest.mark.parametrize("engine", ["higher", "func"])
def test_head_runs_the_backbone_once_per_task_and_updates_only_real_statistics_there(engine):
    model, batch = toy_model(), toy_batch()
    queue = model.method.queue.clone()
    logs, grads = step(model, batch, inner_steps=3, lookahead=2, inner_backend=engine, inner_params="head",
                       tasks_per_step=2)
    assert model.backbone[2].num_batches_tracked.item() == 2  # one pass over both views of each task
    assert torch.equal(model.method.queue, queue)
    assert all(torch.count_nonzero(grads[n]) > 0 for n in grads)  # the backbone's parameters get gradient too


@pytest.mark.parametrize("base, why", [("moco", "its own copy of the backbone"), ("byol", "its own copy of the backbone"),
                                       ("protonet", "no parameters outside the backbone")])
def test_head_refuses_a_method_with_its_own_copy_of_the_backbone_or_no_heads(base, why, tmp_path):
    with pytest.raises(UserError, match=f"--inner-params head cannot split --base {base} into backbone and heads: "
                                        f"it (runs|has) {why}.*; use --inner-params all"):
        prepare_run(parse_args(["--base", base, "--meta", "gessl", "--inner-params", "head", "--out",
                                str(tmp_path / "run")]))
    assert not (tmp_path / "run").exists()
    cfg = prepare_run(parse_args(["--base", "simclr", "--meta", "gessl", "--inner-params", "head", "--out",
                                  str(tmp_path / "run")]))[0]
    assert cfg.inner_params == "head"


class Whole(nn.Module):
    """A model of the user's own: the toy model behind one forward, without backbone, method and regulariser."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, batch):
        return self.inner(batch)


@pytest.mark.parametrize("engine", ["higher", "func"])
def test_auto_adapts_the_heads_of_a_model_that_splits_and_every_parameter_of_any_other(engine):
    model, batch = toy_model(), toy_batch()
    paths = {params: step(copy.deepcopy(model), batch, inner_params=params, inner_backend=engine)[1]
             for params in ("auto", "head", "all")}
    assert any(not torch.allclose(paths["head"][n], paths["all"][n]) for n in paths["all"])  # the paths differ here
    for n in paths["auto"]:
        torch.testing.assert_close(paths["auto"][n], paths["head"][n], rtol=0, atol=0)
    auto, full = (step(Whole(copy.deepcopy(model)), batch, inner_params=params, inner_backend=engine)[1]
                  for params in ("auto", "all"))
    for n in full:
        torch.testing.assert_close(auto[n], full[n], rtol=0, atol=0)
