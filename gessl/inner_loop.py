"""The differentiable inner loop of GeSSL and its pieces, on two engines.

An engine adapts the trainable parameters θ of a model to a task's support batch with K steps of
SGD on the model's loss, keeping the graph back to θ::

    θ_0 = θ,   θ_{k+1} = θ_k − α ∇_θ L(θ_k; S)          (k = 0..K−1)

Second order (default): ∇L is itself differentiated, so the meta-gradient dθ_K/dθ includes the
Hessian-vector products. First order: the inner gradients are treated as constants, so
dθ_K/dθ = identity (FOMAML, Finn et al. 2017) and ∇_θ of the outer loss is its gradient at θ_K:
the engines then build no graph of the inner steps and return θ_K as fresh leaf tensors.

- ``higher``: ``higher.innerloop_ctx`` with a differentiable ``torch.optim.SGD`` (Grefenstette et
  al. 2019, "Generalized Inner Loop Meta-Learning"); first order with ``track_higher_grads=False``.
- ``func``: ``torch.func.functional_call`` with ``torch.autograd.grad(create_graph=...)``, the
  shape of torch.func's MAML example.

Both return ``(fast, losses)``: a dict name → adapted tensor (second order: its graph reaching θ;
first order: a leaf, or θ's own tensor where no step moved it) and the support loss before each step. Only parameters with ``requires_grad`` adapt; frozen ones (EMA
copies) keep their values. Neither engine changes the model's buffers: ``func`` runs on
``scratch_buffers`` and ``higher`` keeps its own copies.
"""
import higher
import torch
from torch.func import functional_call

from baselines.base import heads_alone_refusal


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


def sgd_update(params, grads, lr):
    """θ − α g for each tensor of ``params`` (a dict) and its gradient in ``grads``; None: unmoved."""
    return {n: p if g is None else p - lr * g for (n, p), g in zip(params.items(), grads)}


def _sgd_step(params, loss, lr, create_graph):
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
    return sgd_update(params, grads, lr)


def func_adapt(model, params, support, steps, lr, first_order=False):
    """K differentiable SGD steps with ``torch.func.functional_call`` (see the module docstring)."""
    fast, losses, buffers = dict(params), [], scratch_buffers(model)
    for _ in range(steps):
        loss = functional_call(model, (fast, buffers), (support,)).loss
        losses.append(loss.detach())
        moved = _sgd_step(fast, loss, lr, create_graph=not first_order)
        fast = {n: p.detach().requires_grad_() if first_order and p is not fast[n] else p for n, p in moved.items()}
    return fast, losses


def higher_adapt(model, params, support, steps, lr, first_order=False):
    """K differentiable SGD steps with ``higher`` (see the module docstring)."""
    names = [n for n, _ in model.named_parameters()]
    optimizer = torch.optim.SGD(list(params.values()), lr=lr)
    losses = []
    with higher.innerloop_ctx(model, optimizer, copy_initial_weights=False,
                              track_higher_grads=not first_order) as (fmodel, diffopt):
        for _ in range(steps):
            loss = fmodel(support).loss
            losses.append(loss.detach())
            diffopt.step(loss)
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


def head_model(model):
    """The model without its backbone, for ``--inner-params head``: the same base method (and
    regulariser) modules behind an identity backbone, so ``forward(batch)`` reads backbone features
    from ``batch["views"]``; its parameters are the model's outside ``model.backbone``, under the
    same names.

    The split holds for a model of ``backbone``, ``method`` and ``regulariser`` (``gessl.train``'s
    ``SSLModel``) whose method reaches the images only through the backbone it is given; a method
    built with a copy of the backbone (its constructor takes ``backbone``: a momentum encoder, as
    MoCo's, BYOL's and PsCo's) runs that copy on the images, which cached features cannot stand in
    for, and a method without heads leaves nothing to adapt: ``ValueError`` (``check_head_split``).
    """
    if not splits(model):
        raise ValueError(f"inner_params='head' needs a model of backbone, method and regulariser "
                         f"(gessl.train.SSLModel), not a {type(model).__name__}; use inner_params='all'")
    check_head_split(type(model.method), type(model.method).__name__)
    return type(model)(torch.nn.Identity(), model.method, model.regulariser)


def splits(model):
    """Whether ``model`` is made of ``backbone``, ``method`` and ``regulariser``, as ``gessl.train``'s are."""
    return all(hasattr(model, part) for part in ("backbone", "method", "regulariser"))


def check_head_split(method_cls, name):
    """``ValueError`` naming base method ``name`` when GeSSL cannot adapt its heads alone on backbone
    features (``baselines.base.heads_alone_refusal``)."""
    why = heads_alone_refusal(method_cls)
    if why:
        raise ValueError(f"--inner-params head cannot split --base {name} into backbone and heads: {why}; "
                         f"use --inner-params all")


def backbone_features(backbone, batch):
    """``batch`` with each view replaced by its backbone features, from one pass over all views
    together (as ``baselines.base.project_views`` runs it), with their graph; the pass updates the
    backbone's BatchNorm running statistics."""
    views = batch["views"]
    return {**batch, "views": list(backbone(torch.cat(views)).split([len(v) for v in views]))}
