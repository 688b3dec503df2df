"""Training objectives: the plain base method and GeSSL's bi-level step around it.

GeSSL (Wang et al., "Explicitly Modeling Universality into Self-Supervised Learning", arXiv
2405.01053) as reconstructed in this project (``docs/gessl.md``; the paper's method section
and code are not public, so the options marked [choice] below are ours). One outer step:

1. the batch is cut into M contiguous tasks of sizes that differ by at most one, each task's
   images into a support set S (its first round(t · support_ratio)) and a query set Q
   (``gessl.shares``: the one rule, which the config checks up front);
2. inner loop: θ_K = K differentiable SGD steps (step α) from θ on L(θ; S)   (``inner_loop``);
3. self-motivated target: θ* = λ more steps from θ_K on L(·; S ∪ Q), detached;
4. σ_T = mean over anchors x in O of KL( p_θ*(·|x) ‖ p_θK(·|x) ), where p(·|x) is the
   instance-discrimination posterior: the softmax over the other view of every image in O of
   cosine similarity / τ_σ between projector outputs (``instance_log_posteriors``);
5. outer loss = mean over tasks of  w_σ · σ_T + γ · L(θ_K; O), back-propagated to θ through the
   inner steps (second order) or with dθ_K/dθ = identity (``first_order``).

O, the outer set [choice], is the whole task S ∪ Q (``outer_set="task"``, the default) or the query
Q alone (``"query"``, the meta-learning convention): a contrastive base loss on Q alone sees half
the negatives. α is the base method's (``gessl.config.INNER_LR``), because a step's move scales with
the base loss. Why these defaults: ``docs/gessl.md``, 'Why the defaults are what they are'.

With O = S ∪ Q the look-ahead's first gradient, ∇L(θ_K; S ∪ Q), is the outer base loss's gradient
at θ_K, taken from the outer forward pass rather than a forward pass of its own (``docs/gessl.md``).

``inner_params="head"`` [choice] (ANIL's feature reuse, Raghu et al. 2020; ``docs/gessl.md`` says
why; ``"auto"``, the default, is ``"head"`` for a base method that can adapt its heads alone and
``"all"`` for any other): θ = (θ_b, φ), the backbone's parameters and the rest (heads, a
regulariser's); per task the features h = f_θb(views of S ∪ Q) come from one backbone pass, with
their graph, and steps 2-5 run on them with φ alone adapted::

    φ_{k+1} = φ_k − α ∇_φ L(φ_k; h_S),   φ* = λ more steps from φ_K on h_{S∪Q}, detached,
    outer loss = w_σ · σ(φ*, φ_K; h_O) + γ · L(φ_K; h_O),  differentiated w.r.t. φ and θ_b

(θ_b through h, and in second order also through the inner steps' dependence on h).

BatchNorm uses batch statistics everywhere; the inner loop and the target run on scratch copies of
its running statistics (and of any other buffer, such as a queue), so only the outer forward pass
on O updates them (the backbone's, with ``inner_params="head"``, its one pass per task). Parameters without ``requires_grad`` (EMA copies) are never adapted.

Under several processes (``gessl.distributed``) each process runs its own M / processes tasks of
its share of the batch, with losses that do not gather across processes, and the outer gradients
are averaged with one all-reduce: DDP's hooks do not see a functional backward pass.

Logged values stay tensors, so a step queues its GPU work without waiting for it; the trainer
reads them every ``--log-every`` steps (and times the parts of the step, waiting for the GPU, only
on the ``diagnose`` steps that it logs).
"""
import dataclasses
import math
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from baselines.base import heads_alone_refusal
from baselines.distributed import per_process, world_size
from gessl.collapse import collapse_metrics
from gessl.config import INNER_LR, TrainConfig, method_class
from gessl.device import clock
from gessl.distributed import average_gradients
from gessl.inner_loop import (ENGINES, backbone_features, batch_size, check_head_split, head_model, lookahead,
                              scratch_buffers, sgd_update, splits, take, trainable)
from gessl.shares import smallest_set, support_size, task_slices


def instance_log_posteriors(projections, temperature):
    """Log-posteriors of instance discrimination over a task, one row per anchor view.

    For two views z¹, z² ([N, D] each, ẑ = z/‖z‖): row i of the first half is
    log softmax_j(ẑ¹_i · ẑ²_j / τ), row i of the second half log softmax_j(ẑ²_i · ẑ¹_j / τ), so each
    anchor is classified among the other view of every image ([2N, N]).
    """
    z1, z2 = (F.normalize(z, dim=1) for z in projections)
    logits = torch.cat([z1 @ z2.T, z2 @ z1.T]) / temperature
    return logits.log_softmax(dim=1)


def sigma_kl(target_log_p, log_p):
    """σ = mean over anchors of KL(p* ‖ p) = Σ_j p*_j (log p*_j − log p_j), from log-posteriors."""
    return F.kl_div(log_p, target_log_p, log_target=True, reduction="batchmean")


class PlainStep:
    """The base method alone (``--meta none``): one forward and backward of its loss."""

    @classmethod
    def from_config(cls, cfg):
        return cls()

    def compute_gradients(self, model, batch, diagnose=False, loss_scale=None):
        """Back-propagate the loss of ``batch`` (times ``loss_scale``, fp16's gradient scale, when given)
        into the parameters' ``.grad``; return the logs (detached tensors), with the collapse
        diagnostics (``collapse_logs``) on ``diagnose`` steps."""
        out = model(batch)
        (out.loss if loss_scale is None else out.loss * loss_scale).backward()
        logs = {"loss": out.loss.detach(), **{k: v.detach() for k, v in out.terms.items()}}
        return {**logs, **(collapse_logs(out) if diagnose else {})}

    def __call__(self, model, batch, diagnose=False):
        """``compute_gradients(model, batch, diagnose)``, the call ``GeSSL`` has too."""
        return self.compute_gradients(model, batch, diagnose)


@dataclass
class GeSSL:
    """GeSSL's outer step around any model whose ``forward(batch)`` returns an ``SSLOutput``.

    The public object of ``gessl`` (``docs/api.md``) and the one ``gessl.train --meta gessl`` uses. In
    a user's loop, with the user's own optimiser::

        step = GeSSL(inner_lr=1e-3)
        optimizer.zero_grad()
        logs = step(model, batch)      # back-propagates the outer loss into .grad, returns the logs
        optimizer.step()

    ``batch`` is a dict of tensors (or lists of tensors) indexed by image, with ``batch["views"]``
    the two augmented views ([B, ...] each); ``model(batch)`` returns an ``SSLOutput`` whose
    ``loss`` is the base loss and whose ``projections`` are the two views' projector outputs
    ([B, D] each). The options (see the module docstring) default to ``TrainConfig``'s; ``inner_lr``
    to SimCLR's α (``docs/gessl.md`` says why a base method may need another).
    """

    inner_steps: int = TrainConfig.inner_steps              # K
    lookahead: int = TrainConfig.lookahead                  # λ
    inner_lr: float = INNER_LR["simclr"]                    # α, SGD step of the inner loop and the look-ahead (SimCLR's)
    support_ratio: float = TrainConfig.support_ratio        # share of a task's images in its support set
    tasks_per_step: int = TrainConfig.tasks_per_step        # M: the batch is cut into M tasks (0: one per process)
    gamma: float = TrainConfig.gamma                        # γ, weight of L(θ_K; Q)
    sigma_weight: float = TrainConfig.sigma_weight          # w_σ
    sigma_temperature: float = TrainConfig.sigma_temperature  # τ_σ of the posteriors
    first_order: bool = TrainConfig.first_order
    inner_params: str = TrainConfig.inner_params            # "head" (φ, on backbone features), "all" (θ) or "auto"
    outer_set: str = TrainConfig.outer_set                  # O: "query" (Q) or "task" (S ∪ Q)
    inner_backend: str = TrainConfig.inner_backend

    @classmethod
    def from_config(cls, cfg):
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})

    @staticmethod
    def check_config(cfg):
        """``ValueError`` for a config GeSSL cannot train: ``--inner-params head`` around a base method
        that cannot run on backbone features (``gessl.inner_loop.check_head_split``)."""
        if cfg.inner_params == "head":
            check_head_split(method_class(cfg.base), cfg.base)

    def compute_gradients(self, model, batch, diagnose=False):
        """Back-propagate the outer loss into θ's ``.grad``, averaged over processes; return the logs
        (of this process's tasks).

        Logs (detached tensors): ``loss`` (the outer loss), ``sigma_kl`` (σ, the KL gap to the target), ``query_loss`` (L(θ_K; O)),
        ``inner_loss_k`` (the support loss before inner step k), the outer set's named base terms, and the
        seconds spent in the inner loop (with ``inner_params="head"``, the backbone's pass), the outer
        forward pass with the target, and the outer backward pass (measured on ``diagnose`` steps). With ``diagnose``, also the gradient norms of the σ term and of the
        query-loss term, σ's share of their sum, and the collapse diagnostics of the outer set's
        projections (``collapse_logs``).
        """
        with per_process():
            self._check_inputs(model, batch)
            return self._compute_gradients(model, batch, diagnose)

    def __call__(self, model, batch, diagnose=False):
        """``compute_gradients(model, batch, diagnose)``: one outer step's gradients, the logs returned."""
        return self.compute_gradients(model, batch, diagnose)

    def _heads_alone(self, model):
        """Whether the step adapts ``model``'s heads alone: ``inner_params="head"``, or ``"auto"`` with a
        model of backbone, method and regulariser whose method can adapt its heads alone
        (``baselines.base.heads_alone_refusal``); any other model adapts every parameter."""
        if self.inner_params == "auto":
            return splits(model) and heads_alone_refusal(type(model.method)) is None
        return self.inner_params == "head"

    def task_sets(self, batch):
        """This process's tasks of ``batch`` as the step cuts them: a ``(support, outer)`` pair of
        sub-batches per task (``docs/gessl.md``): the task's first ``round(t · support_ratio)`` of its
        t images, and the images of the outer loss (``outer_set``: the whole task, or the rest)."""
        return [self._split(take(batch, index)) for index in self._slices(batch)]

    def _task_count(self):
        """This process's tasks per step: M over the processes (M = 0: one each), at least one."""
        return max(1, (self.tasks_per_step or world_size()) // world_size())

    def _slices(self, batch):
        """The slices of ``batch`` that are this process's tasks."""
        return task_slices(batch_size(batch), self._task_count())

    def _split(self, task):
        """``(support, outer)`` of one task (``task_sets``)."""
        n_support = support_size(batch_size(task), self.support_ratio)
        outer = take(task, slice(n_support, None)) if self.outer_set == "query" else task
        return take(task, slice(0, n_support)), outer

    def _check_inputs(self, model, batch):
        """A one-sentence ``ValueError`` for a batch that is not a dict of views indexed by image or
        too small to cut into tasks, and, on the first call with ``model``, for a model whose
        ``forward(batch)`` gives no projections of the two views or a loss that is not finite (one
        forward pass without gradients, on scratch buffers and a forked random state, so training
        goes on as if it had not run)."""
        views = batch.get("views") if isinstance(batch, dict) else None
        if not (isinstance(views, (list, tuple)) and len(views) == 2
                and all(torch.is_tensor(v) and v.dim() > 0 for v in views)):
            raise ValueError("GeSSL needs a batch dict whose 'views' is a list of two tensors (the two augmented "
                             f"views of the same images, [B, ...] each), got {_describe(batch)}")
        n = batch_size(batch)
        for key, value in batch.items():
            for row, part in enumerate(value if isinstance(value, (list, tuple)) else [value]):
                if not torch.is_tensor(part) or tuple(part.shape[:1]) != (n,):
                    raise ValueError(f"GeSSL needs every entry of the batch indexed by image: batch[{key!r}]"
                                     f"{f'[{row}]' if isinstance(value, (list, tuple)) else ''} is "
                                     f"{_describe(part)}, not a tensor of {n} rows like the views")
        tasks = self._task_count()
        if smallest_set(n, tasks, self.support_ratio) < 2:
            raise ValueError(f"a batch of {n} images cut into {tasks} tasks (support_ratio {self.support_ratio}) "
                             "leaves fewer than 2 images in a support or query set; use a larger batch or "
                             "fewer tasks_per_step")
        checked = getattr(self, "_checked_model", None)
        if checked is not None and checked() is model:
            return
        device = views[0].device
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            out = functional_call(model, scratch_buffers(model), (batch,))
        projections = getattr(out, "projections", None)
        if not (isinstance(projections, (list, tuple)) and len(projections) == 2
                and all(torch.is_tensor(z) and z.dim() == 2 and len(z) == n for z in projections)):
            raise ValueError("GeSSL needs model(batch) to return an SSLOutput whose projections are the two views' "
                             f"projector outputs ([{n}, D] each), got projections {_describe(projections)}")
        loss = getattr(out, "loss", None)
        if not (torch.is_tensor(loss) and loss.numel() == 1 and math.isfinite(loss.item())):
            raise ValueError(f"GeSSL needs model(batch) to return a finite scalar loss, got {_describe(loss)}")
        self._checked_model = weakref.ref(model)

    def _compute_gradients(self, model, batch, diagnose):
        params = trainable(model)
        net, adapted = model, params  # the network the inner loop runs, and the parameters it adapts
        if self._heads_alone(model):
            net = head_model(model)
            adapted = {n: p for n, p in params.items() if not n.startswith("backbone.")}
            # what the heads need of the images themselves (DSA's prior features), before backbone
            # features stand in for the views
            batch = getattr(model, "prepare_batch", lambda b: b)(batch)
        adapt = ENGINES[self.inner_backend]
        device = batch["views"][0].device
        tasks = self._slices(batch)
        logs, sigma_grads = {}, None
        seconds = {"time_inner": 0.0, "time_target": 0.0, "time_outer": 0.0}
        for index in tasks:
            start = clock(device, diagnose)
            task = take(batch, index)
            if net is not model:
                task = backbone_features(model.backbone, task)
            support, outer = self._split(task)
            buffers = scratch_buffers(net)  # as the outer forward finds them: the target's forward runs on a copy
            fast, inner_losses = adapt(net, adapted, support, self.inner_steps, self.inner_lr, self.first_order)
            adapted_at = clock(device, diagnose)
            out, target, loss_grads = self._outer_forward_and_target(net, fast, task, outer)
            with torch.no_grad():
                target_out = functional_call(net, (target, buffers), (outer,))
                target_log_p = instance_log_posteriors(target_out.projections, self.sigma_temperature)
            targeted = clock(device, diagnose)
            sigma = sigma_kl(target_log_p, instance_log_posteriors(out.projections, self.sigma_temperature))
            sigma_term = self.sigma_weight * sigma / len(tasks)
            loss = sigma_term + self.gamma * out.loss / len(tasks)
            # First order: ∇_θ is the gradient at θ_K, whose fast tensors are leaves (under
            # inner_params="head" the backbone's parameters are θ's own).
            roots = {n: fast.get(n, p) for n, p in params.items()} if self.first_order else params
            reuse = loss_grads is not None and self.first_order and net is model
            task_sigma_grads = _grads(sigma_term, roots, retain_graph=True) if diagnose or reuse else None
            if reuse:  # ∇_θ L(θ_K; O) = ∇_θK L(θ_K; O): the look-ahead's first gradient, scaled
                scale = self.gamma / len(tasks)
                grads = {n: _sum(g, None if loss_grads[n] is None else scale * loss_grads[n])
                         for n, g in task_sigma_grads.items()}
            else:
                grads = _grads(loss, roots)
            for n, g in grads.items():
                params[n].grad = _sum(params[n].grad, g)
            if diagnose:
                grads = [torch.zeros_like(params[n]) if g is None else g for n, g in task_sigma_grads.items()]
                sigma_grads = grads if sigma_grads is None else [a + b for a, b in zip(sigma_grads, grads)]
            seconds["time_inner"] += adapted_at - start
            seconds["time_target"] += targeted - adapted_at
            seconds["time_outer"] += clock(device, diagnose) - targeted
            # in float64, so that the sums over tasks are those of Python floats
            task_logs = {"loss": loss.detach().double(), "sigma_kl": sigma.detach().double() / len(tasks),
                         "query_loss": out.loss.detach().double() / len(tasks),
                         **{k: v.detach().double() / len(tasks) for k, v in out.terms.items()},
                         **{f"inner_loss_{k}": v.double() / len(tasks) for k, v in enumerate(inner_losses)}}
            if diagnose:
                task_logs.update({k: v.double() / len(tasks) for k, v in collapse_logs(out).items()})
            for k, v in task_logs.items():
                logs[k] = logs[k] + v if k in logs else v
        average_gradients([p.grad for p in params.values() if p.grad is not None])
        if diagnose:
            average_gradients(sigma_grads)
            logs.update(_grad_norms(sigma_grads, [p.grad for p in params.values()]))
        return {**logs, **seconds}

    def _outer_forward_and_target(self, net, fast, task, outer):
        """The outer forward pass at θ_K on O (the one that updates the running statistics), the
        look-ahead's θ*, and the look-ahead's first gradient ∇_θK L(θ_K; S ∪ Q) by name, or None.

        With O = S ∪ Q that gradient is the outer base loss's at θ_K: taken from the outer forward
        pass (kept for the outer backward), it saves the look-ahead a forward pass. Its remaining
        λ − 1 steps then start from buffers that have seen one forward pass on the task at θ_K, as
        the look-ahead's own first step would have left them.
        """
        if self.outer_set != "task" or self.lookahead == 0:
            target = lookahead(net, fast, task, self.lookahead, self.inner_lr)
            return functional_call(net, fast, (outer,)), target, None
        out = functional_call(net, fast, (outer,))
        grads = torch.autograd.grad(out.loss, list(fast.values()), retain_graph=True, allow_unused=True)
        first = sgd_update({n: p.detach() for n, p in fast.items()}, [g if g is None else g.detach() for g in grads],
                           self.inner_lr)
        target = lookahead(net, first, task, self.lookahead - 1, self.inner_lr)
        return out, target, dict(zip(fast, grads))


def _grads(loss, roots, retain_graph=False):
    """∂loss/∂root by name (None where the loss does not depend on it: the parameter's ``.grad`` is
    then left as it is, as ``backward`` leaves it)."""
    return dict(zip(roots, torch.autograd.grad(loss, list(roots.values()), retain_graph=retain_graph,
                                               allow_unused=True)))


def _sum(a, b):
    """a + b, where None stands for no gradient."""
    return a if b is None else b if a is None else a + b


def _describe(value):
    """A short description of ``value`` for an error message: a tensor's shape and values, else its type."""
    if torch.is_tensor(value):
        return f"a tensor of shape {list(value.shape)}" + (f" ({value.item()})" if value.numel() == 1 else "")
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}: [{', '.join(_describe(v) for v in value[:3])}]"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))}"
    return "None" if value is None else f"a {type(value).__name__}"


def collapse_logs(out):
    """The collapse diagnostics (``gessl.collapse``) of a base method's output: of its first view's
    projections and codes; none for a method without projections."""
    if not out.projections:
        return {}
    return collapse_metrics(out.projections[0], out.codes[0] if out.codes else None)


def _grad_norms(sigma_grads, total_grads):
    """Norms of the σ term's gradient and of the rest (total − σ), and σ's share of their sum."""
    sigma = torch.sqrt(sum(g.square().sum() for g in sigma_grads)).item()
    rest = torch.sqrt(sum((t - g).square().sum() for t, g in zip(total_grads, sigma_grads) if t is not None)).item()
    return {"grad_norm_sigma_kl": sigma, "grad_norm_query_loss": rest,
            "sigma_kl_grad_share": sigma / max(sigma + rest, 1e-12)}


META_OPTIMISERS = {"none": PlainStep, "gessl": GeSSL}
