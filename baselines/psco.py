"""PsCo (Jang, Lee, Shin, ICLR 2023, "Unsupervised Meta-learning via Few-shot Pseudo-supervised
Contrastive Learning", arXiv 2303.00996; code github.com/alinlab/PsCo, ``models.py``,
``PsCoMoCo``): unsupervised meta-learning whose tasks are built, at every step, from the batch and
a queue of past momentum keys, on top of MoCo.

For a batch of N images with online queries q_i = ḡ(g(f(x¹_i))) (backbone f, projector g,
predictor ḡ, ℓ2-normalised) and momentum keys k_i of the other view (the momentum backbone and
projector, ℓ2-normalised), and a queue Z = [z_1 … z_M] of past keys:

    pseudo-labels  A = Sinkhorn(K Zᵀ) ∈ R^{N×M}: exp(k_i·z_m / ε), rescaled alternately so that
                   every queue entry gets 1/M and every sample 1/N of the mass (3 iterations), each
                   row finally summing to 1 (SwAV's codes with the queue as prototypes; no gradient)
    shots          S_i = {z_m : m among the K largest A_im}: the support set of sample i's class in
                   an N-way K-shot pseudo task whose classes are the batch's images
    L_PsCo         −(1/N) Σ_i (1/K) Σ_{s ∈ S_i} log [ exp(q_i·s / τ_PsCo) / Σ_j Σ_{s' ∈ S_j} exp(q_i·s' / τ_PsCo) ]
                   (the supervised contrastive loss of the pseudo task: each query against every
                   shot of the task, its own class's shots as positives)
    L_MoCo         −(1/N) Σ_i log [ exp(q_i·k_i / τ) / (exp(q_i·k_i / τ) + Σ_m exp(q_i·z_m / τ)) ]
    L              L_PsCo + L_MoCo

(weights 1 and 1, as the public code adds them). The queue is the one before this batch; afterwards
the keys are enqueued, and the momentum encoder ξ ← m·ξ + (1 − m)·θ follows the online backbone and
projector after every optimiser step (``baselines.momentum``). Everything except MoCo's own pieces
is in this module; the rest is reused: ``PsCo`` is a ``baselines.moco.MoCo`` (projector, momentum
key encoder, queue buffers and ``enqueue``, ``after_step``, ``info_nce`` for L_MoCo), the
pseudo-labels are ``baselines.swav.sinkhorn``, the predictor is ``projection_mlp``.

Our [choice]s, against the paper's one-directional loss (x¹ the query, x² the key):

- the loss is symmetric, L = ½ [L(q¹; k², shots of k²) + L(q²; k¹, shots of k¹)], as the project's
  MoCo: the online backbone sees both views anyway (every base returns the projections of both),
  and each image gives two queries per step;
- one key per image is enqueued, that of the second view (the paper's keys are all of one view; the
  two views are drawn alike here): with both, the K > 1 shots of a sample would often be the two
  keys of a single past image;
- both views get the same augmentation (the paper gives queries a strong and keys a weak one);
- the projector is MoCo's with a BatchNorm on its output (``projection_mlp(..., output_bn=True)``,
  512 → 128; the paper's is 4096 → 256 with an affine-free BatchNorm on its output), the predictor
  ``projection_mlp(proj_dim, proj_hidden, proj_dim)`` (the paper's 256 → 4096 → 256: the same
  hidden width as its projector, so ``proj_hidden`` here). The output BatchNorm matters, as BYOL's
  projections needed one (``docs/bases.md``, 'PsCo').

The paper's settings (Omniglot, conv4; ``train.py`` and the README of its code): K = 1 shot (4 on
miniImageNet, the code's default), a queue of 16,384, τ_PsCo = 1 (``temperature2``), τ = 0.2,
Sinkhorn ε = 0.05 with 3 iterations, momentum 0.99, the predictor on, SGD (0.03·batch/256, weight
decay 5·10⁻⁴) for 400 epochs of batch 256; reported: about 96 / 99 % on Omniglot 5-way 1 / 5-shot.
Glyph defaults: K = 1 (``psco_shots``), τ_PsCo = 1 (``psco_temperature``), ε = 0.05
(``psco_epsilon``), 3 iterations, and MoCo's options for the rest: ``temperature`` (0.1, MoCo's
here), ``moco_momentum`` (0.99, the paper's) and ``moco_queue`` = 4096. The queue, one key per
image, holds the last 32 steps of 128 images: far less than the paper's (which holds 64 steps of 256
and most of its training set), because a short run needs a queue that fills early (until then its
random initial entries serve as shots) and whose keys the momentum encoder has not outgrown; 4096
is still 17 % of the glyphs' 24,560 training images (about 3 of the 20 images of a class) and 85 %
of the 4,840 of Omniglot's minimal sets. How it compares with the other bases: docs/results.md,
'Every base method alone'.

PsCo is itself an unsupervised meta-learner (``meta_learner = True``, as UMTRA): each step is a
pseudo N-way K-shot task, so ``gessl.train`` refuses ``--meta gessl`` around it. The projections
are the projector outputs of the two views.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from baselines.base import SSLOutput
from baselines.distributed import gather
from baselines.moco import MoCo, info_nce
from baselines.options import option, positive
from baselines.simclr import projection_mlp
from baselines.swav import sinkhorn

SINKHORN_ITERATIONS = 3  # the paper's (``--sinkhorn-iter`` of its code) and SwAV's


@torch.no_grad()
def pseudo_shots(keys, queue, shots, epsilon=0.05, iterations=SINKHORN_ITERATIONS):
    """The indices ([N, K]) of each key's K shots in ``queue`` ([M, D]): the K largest entries of
    its row of A = Sinkhorn(keys · queueᵀ) (module docstring), largest first; and A itself."""
    scores = keys @ queue.T
    assignment = sinkhorn(scores.to(torch.promote_types(scores.dtype, torch.float32)), epsilon, iterations)  # not in bf16
    return assignment.topk(shots, dim=1).indices, assignment


def pseudo_supervised_contrast(q, shots, temperature=1.0):
    """L_PsCo of the module docstring for queries ``q`` ([N, D], normalised here) and the support
    set ``shots`` ([N, K, D], row i the shots of sample i's class)."""
    q = F.normalize(q, dim=1)
    n, k, d = shots.shape
    logits = q @ shots.reshape(n * k, d).T / temperature  # [N, N·K]: each query against every shot
    own = logits.reshape(n, n, k)[torch.arange(n, device=q.device), torch.arange(n, device=q.device)]  # [N, K]
    return (logits.logsumexp(1) - own.mean(1)).mean()


class PsCo(MoCo):
    """PsCo: MoCo's heads, key encoder and queue, a predictor, and the pseudo-task loss.

    ``backbone`` is the online backbone, copied into the key encoder at construction.
    """

    @dataclass
    class Options(MoCo.Options):
        """PsCo's options (``baselines.options``)."""

        psco_shots: int = option(1, "K, shots per image taken from the queue (the top K of its Sinkhorn "
                                    "assignment; Jang et al.: 1 on Omniglot, 4 on miniImageNet)", positive)
        psco_temperature: float = option(1.0, "temperature of the pseudo-task contrastive loss (1 in the paper; "
                                              "--temperature is its MoCo term's)", positive)
        psco_epsilon: float = option(0.05, "epsilon, entropy weight of the Sinkhorn assignment of keys to the queue "
                                           "(0.05 in the paper)", positive)

        def check(self):
            if self.psco_shots > self.moco_queue:
                return [("psco_shots", f"{self.psco_shots} asks for more shots per image than the --moco-queue "
                                       f"{self.moco_queue} keys of the queue")]
            return []

    meta_learner = True
    projector_output_bn = True  # the paper's head

    def __init__(self, feat_dim, backbone, proj_hidden=512, proj_dim=128, temperature=0.1, moco_queue=4096,
                 moco_momentum=0.99, psco_shots=1, psco_temperature=1.0, psco_epsilon=0.05):
        super().__init__(feat_dim, backbone, proj_hidden, proj_dim, temperature, moco_queue, moco_momentum)
        self.predictor = projection_mlp(proj_dim, proj_hidden, proj_dim)
        self.shots, self.psco_temperature, self.epsilon = psco_shots, psco_temperature, psco_epsilon

    def forward(self, backbone, batch):
        views = torch.cat(batch["views"])
        z = self.projector(backbone(views))
        q1, q2 = self.predictor(z).chunk(2)
        keys = F.normalize(self.key_encoder(views), dim=1)
        k1, k2 = keys.chunk(2)
        queue = self.queue.clone()  # the graph keeps this copy; the queue itself changes below
        psco1, moco1 = self.task_loss(q1, k2, queue)
        psco2, moco2 = self.task_loss(q2, k1, queue)
        psco, moco = (psco1 + psco2) / 2, (moco1 + moco2) / 2
        self.enqueue(gather(k2))
        return SSLOutput(psco + moco, {"psco_pseudo_contrast": psco, "psco_moco_infonce": moco}, tuple(z.chunk(2)))

    def task_loss(self, q, k, queue):
        """(L_PsCo, L_MoCo) of queries ``q`` whose positives are keys ``k``, against ``queue``."""
        index, _ = pseudo_shots(k, queue, self.shots, self.epsilon)
        return pseudo_supervised_contrast(q, queue[index], self.psco_temperature), info_nce(q, k, queue, self.temperature)
