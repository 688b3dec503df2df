"""The differentiable inner loop of GeSSL and its pieces, on two engines.

An engine adapts the trainable parameters θ of a model to a task's support batch with K steps of
SGD on the model's loss, keeping the graph back to θ::

    θ_0 = θ,   θ_{k+1} = θ_k − α ∇_θ L(θ_k; S)          (k = 0..K−1)

Second order (default): ∇L is itself differentiated, so the meta-gradient dθ_K/dθ includes the
Hessian-vector products. First order: the inner gradients are treated as constants, so
dθ_K/dθ = identity (FOMAML, Finn et al. 2017).

- ``higher``: ``higher.innerloop_ctx`` with a differentiable ``torch.optim.SGD`` (Grefenstette et
  al. 2019, "Generalized Inner Loop Meta-Learning"); first order detaches the gradients in its
  ``grad_callback``.
- ``func``: ``torch.func.functional_call`` with ``torch.autograd.grad(create_graph=...)``, the
  shape of torch.func's MAML example.

Both return ``(fast, losses)``: a dict name → adapted tensor (its graph reaching θ) and the
support loss before each step. Only parameters with ``requires_grad`` adapt; frozen ones (EMA
copies) keep their values. Neither engine changes the model's buffers: ``func`` runs on
``scratch_buffers`` and ``higher`` keeps its own copies.
"""
import higher
import torch
from torch.func import functional_call


def scratch_buffers(module):
    """Copies of ``module``'s buffers (BatchNorm running statistics, queues) for functional calls.

    Forward passes in the inner loop and the look-ahead run in train mode, normalising with batch
    statistics; the running averages they update are these copies, thrown away afterwards, so the
    module's own buffers are changed only by the outer step.
    """
    return {n: b.clone() for n, b in module.named_buffers()}


def take(batch, index):
    """The sub-batch at ``index`` (a slice or index tensor) of every tensor in ``batch``.

    ``batch`` maps names to tensors or lists of tensors (the views), all indexed by image.
    """
    return {k: [v[index] for v in value] if isinstance(value, (list, tuple)) else value[index]
            for k, value in batch.items()}


def batch_size(batch):
    """Number of images in ``batch`` (the length of its first view)."""
    return len(batch["views"][0])


def trainable(model):
    """The adaptable parameters θ of ``model``: name → parameter, those with ``requires_grad``."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _sgd_step(params, loss, lr, create_graph):
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
    return {n: p if g is None else p - lr * g for (n, p), g in zip(params.items(), grads)}


def func_adapt(model, params, support, steps, lr, first_order=False):
    """K differentiable SGD steps with ``torch.func.functional_call`` (see the module docstring)."""
    fast, losses, buffers = dict(params), [], scratch_buffers(model)
    for _ in range(steps):
        loss = functional_call(model, (fast, buffers), (support,)).loss
        losses.append(loss.detach())
        fast = _sgd_step(fast, loss, lr, create_graph=not first_order)
    return fast, losses


def _detach_grads(grads):
    return [None if g is None else g.detach() for g in grads]


def higher_adapt(model, params, support, steps, lr, first_order=False):
    """K differentiable SGD steps with ``higher`` (see the module docstring)."""
    names = [n for n, _ in model.named_parameters()]
    optimizer = torch.optim.SGD(list(params.values()), lr=lr)
    losses = []
    with higher.innerloop_ctx(model, optimizer, copy_initial_weights=False) as (fmodel, diffopt):
        for _ in range(steps):
            loss = fmodel(support).loss
            losses.append(loss.detach())
            diffopt.step(loss, grad_callback=_detach_grads if first_order else None)
        fast = dict(zip(names, fmodel.fast_params))
    return {n: fast[n] for n in params}, losses


ENGINES = {"higher": higher_adapt, "func": func_adapt}


def lookahead(model, fast, batch, steps, lr):
    """The self-motivated target θ*: ``steps`` more SGD steps from θ_K on ``batch``, detached.

    No graph is kept: θ* is a constant of the outer loss. With ``steps == 0`` it is θ_K detached.
    """
    target, buffers = {n: p.detach().requires_grad_() for n, p in fast.items()}, scratch_buffers(model)
    with torch.enable_grad():
        for _ in range(steps):
            loss = functional_call(model, (target, buffers), (batch,)).loss
            target = {n: p.detach().requires_grad_() for n, p in _sgd_step(target, loss, lr, False).items()}
    return {n: p.detach() for n, p in target.items()}
