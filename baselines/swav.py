"""SwAV (Caron et al., NeurIPS 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments"): predict the cluster assignment (code) of one view from the other view.

Projections are L2-normalised, z = g(f(x)) / ‖g(f(x))‖, and scored against K trainable prototypes
c_k, themselves of unit norm (C = [c_1 … c_K] ∈ R^{D×K}). For each view t of N images:

    codes      Q_t = Sinkhorn(zᵀ_t C): exp(zᵀC / ε), then alternately rescaled so that every
               prototype gets 1/K and every sample 1/N of the mass (3 iterations), each sample's row
               finally summing to 1; computed without gradient                  (§3.1, eq. 3, App. A.1)
    prediction p_t^(k) = softmax_k(z_tᵀ c_k / τ)
    loss       L = −(1/2N) Σ_n Σ_k [q_{2,n}^(k) log p_{1,n}^(k) + q_{1,n}^(k) log p_{2,n}^(k)]   (eq. 1–2)

i.e. the "swapped prediction" cross-entropy, averaged over the two directions. Under DDP the
Sinkhorn sums run over the gathered batch (``baselines.distributed.gather``), so the codes are
those of the global batch, as in the paper.

Prototypes: ``forward`` uses F.normalize of the prototype weights, so the loss is a pure function of
the parameters (GeSSL's inner loop steps off the sphere and still sees unit prototypes), and
``after_step`` writes the normalised weights back after each optimiser step, as the paper
normalises them before each step.

Queue (``swav_queue`` N > 0, off by default): a buffer of the last N normalised projections of each
view. Once it has filled up, its scores against the current prototypes join the Sinkhorn problem,
so small batches still get well spread codes; it serves only to compute the codes (no loss on it).
The paper starts filling the queue after some epochs (15 at batch 256); here it fills from the
first step and is used once full. Under DDP each process keeps its own N entries (wrap the model
with ``broadcast_buffers=False``, or every process gets rank 0's queue).

Left out: multi-crop (the two views are the only crops) and freezing the prototypes during the
first epoch.

Settings: the paper (ImageNet) and CIFAR-scale reimplementations use a 2048-wide hidden layer,
128-d projections, 3000 prototypes, ε = 0.05, 3 Sinkhorn iterations, τ = 0.1 and, at batch 256, a
queue of 3840. On the 28×28 glyphs: the config's 512 → 128 projector, 300 prototypes (the
background split has 1,228 classes; see ``SwAV``), 3 iterations, no queue, and two [choice]s of
ours: τ = 0.2 (``swav_temperature``) and ε = 0.03 (``swav_epsilon``, sharper codes), chosen in
short runs on Omniglot's minimal sets (``docs/bases.md``, 'SwAV', which also has the variants
tried: temperatures, prototypes, queue, SGD, length of training).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from baselines.base import SSLOutput, project_views
from baselines.distributed import gather
from baselines.options import Projector, non_negative, option, positive
from baselines.simclr import projection_mlp


def _global_sum(x):
    """``x`` summed over every process (``x`` itself when not distributed)."""
    return gather(x.unsqueeze(0)).sum(0)


@torch.no_grad()
def sinkhorn(scores, epsilon=0.05, iterations=3):
    """Codes Q ([N, K], rows summing to 1) of ``scores`` = zᵀC ([N, K]) by Sinkhorn-Knopp.

    Q starts as exp(scores / ε) normalised to total mass 1; each iteration rescales every prototype
    (column) to mass 1/K, then every sample (row) to mass 1/N; at the end rows are scaled to sum
    to 1. Prototype sums and N are taken over all processes. Scores are cosines (≤ 1): shifting
    them by −1 before the exponential cannot overflow and cancels in the first normalisation.
    """
    q = torch.exp((scores - 1) / epsilon)
    n = _global_sum(torch.tensor(float(q.shape[0]), dtype=q.dtype, device=q.device))
    k = q.shape[1]
    q = q / _global_sum(q.sum())
    for _ in range(iterations):
        q = q / _global_sum(q.sum(0)) / k
        q = q / q.sum(1, keepdim=True) / n
    return q * n


def swapped_prediction(z1, z2, prototypes, codes1, codes2, temperature=0.1):
    """L of the module docstring from normalised projections, unit prototypes ([K, D]) and codes."""
    log_p1 = F.log_softmax(z1 @ prototypes.T / temperature, dim=1)
    log_p2 = F.log_softmax(z2 @ prototypes.T / temperature, dim=1)
    return -0.5 * ((codes2 * log_p1).sum(1).mean() + (codes1 * log_p2).sum(1).mean())


class SwAV(nn.Module):
    """SwAV head and loss; ``forward(backbone, batch)`` returns an ``SSLOutput``.

    Glyph default of 300 prototypes: the paper over-clusters (3000 prototypes for ImageNet's 1000
    classes), but its codes need many samples per prototype, and a glyph batch holds 128 images of
    a split with 1,228 classes. At 300 prototypes a batch still puts about 0.4 image on each, and a
    prototype groups about 4 classes: coarse, but it keeps the equipartition meaningful without a
    queue. (CIFAR scale: 3000 prototypes, see the module docstring.)
    """

    @dataclass
    class Options(Projector):
        """SwAV's options (``baselines.options``)."""

        swav_temperature: float = option(0.2, "tau, temperature of the prototype softmax (0.1 in the paper)", positive)
        swav_prototypes: int = option(300, "K, number of prototypes (3000 at CIFAR scale)", positive)
        swav_epsilon: float = option(0.03, "epsilon, entropy weight of the Sinkhorn codes (0.05 in the paper)",
                                     positive)
        swav_iters: int = option(3, "Sinkhorn-Knopp iterations", positive)
        swav_queue: int = option(0, "past projections per view (per process) added to the Sinkhorn problem once "
                                    "filled (0: no queue)", non_negative)

    broadcast_buffers = False  # under DDP each process keeps its own queue (module docstring)

    def __init__(self, feat_dim, proj_hidden=512, proj_dim=128, swav_temperature=0.2, swav_prototypes=300,
                 swav_epsilon=0.03, swav_iters=3, swav_queue=0):
        super().__init__()
        self.projector = projection_mlp(feat_dim, proj_hidden, proj_dim)
        self.prototypes = nn.Linear(proj_dim, swav_prototypes, bias=False)
        self.proj_dim = proj_dim
        self.temperature, self.epsilon, self.iterations = swav_temperature, swav_epsilon, swav_iters
        self.register_buffer("queue", torch.zeros(2, swav_queue, proj_dim))  # newest first, per view
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))  # entries filled so far

    def codes(self, z, prototypes, view):
        """Sinkhorn codes of the normalised projections ``z`` of one view, with the queue once full."""
        with torch.no_grad():
            scores = z @ prototypes.T
            full = self.queue.shape[1] > 0 and int(self.queue_count) == self.queue.shape[1]
            if full:
                scores = torch.cat([scores, self.queue[view] @ prototypes.T])
            return sinkhorn(scores, self.epsilon, self.iterations)[:len(z)]

    @torch.no_grad()
    def enqueue(self, zs):
        """Put each view's projections at the front of its queue, in place, dropping the oldest."""
        size = self.queue.shape[1]
        if size == 0:
            return
        for view, z in enumerate(zs):
            self.queue[view].copy_(torch.cat([z.detach(), self.queue[view]])[:size])
        self.queue_count.copy_(torch.clamp(self.queue_count + len(zs[0]), max=size))

    def forward(self, backbone, batch):
        z1, z2 = (F.normalize(z, dim=1) for z in project_views(backbone, self.projector, batch))
        prototypes = F.normalize(self.prototypes.weight, dim=1)
        q1, q2 = self.codes(z1, prototypes, 0), self.codes(z2, prototypes, 1)
        loss = swapped_prediction(z1, z2, prototypes, q1, q2, self.temperature)
        self.enqueue((z1, z2))
        return SSLOutput(loss, {"swav_swapped_prediction": loss}, (z1, z2), (q1, q2))

    @torch.no_grad()
    def after_step(self, backbone, progress):
        """Write the prototypes back onto the unit sphere (the paper normalises them every step)."""
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
