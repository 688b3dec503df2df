"""Collapse diagnostics of a batch's projections, logged by training (``metrics.jsonl``).

For projections z ([N, D], one view) and their ℓ2-normalised rows ẑ:

- ``std_ratio`` = √D · mean_d std_n(ẑ_{n,d}): the per-dimension standard deviation of the normalised
  outputs, as SimSiam tracks it (Chen & He, CVPR 2021, "Exploring Simple Siamese Representation
  Learning", §4.1: a collapsed output has std 0, outputs spread like an isotropic Gaussian have
  std ≈ 1/√D), scaled so that 1 is spread and 0 is collapsed;
- ``effective_rank`` = exp(−Σ_i p_i log p_i), p_i = s_i / Σ_j s_j over the singular values s of the
  centred z (Roy & Vetterli, EUSIPCO 2007, "The effective rank: a measure of effective
  dimensionality"): how many directions the batch really uses, 0 when every row is the same (to
  rounding: Σ s below ``RELATIVE_SPREAD`` · ‖z‖_F);
- for methods that assign codes (SwAV), from the codes q ([N, K], rows summing to 1):
  ``code_entropy`` = H(mean_n q_n) / log K, 1 when the batch uses every prototype alike and 0 when
  one takes everything, and ``prototype_usage``, the share of prototypes that are some sample's
  most likely one.

``collapsing`` says which of them signal a collapse: ``std_ratio`` below 0.1, an effective rank
below 2, or a code entropy below 0.1.
"""
import math

import torch
import torch.nn.functional as F

THRESHOLDS = {"std_ratio": 0.1, "effective_rank": 2.0, "code_entropy": 0.1}
RELATIVE_SPREAD = 1e-5  # singular values summing to less than this share of ‖z‖ are rounding: effective rank 0


@torch.no_grad()
def collapse_metrics(z, codes=None):
    """The diagnostics of the module docstring, as float tensors (no host sync), for projections
    ``z`` [N, D] and, when given, codes ``codes`` [N, K]."""
    z = z.detach().float()
    finite = torch.isfinite(z).all()  # a diverged step: NaN diagnostics, and the trainer's check speaks
    z = torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)  # the SVD refuses non-finite input
    out = {"std_ratio": F.normalize(z, dim=1).std(0).mean() * math.sqrt(z.shape[1])}
    s = torch.linalg.svdvals(z - z.mean(0))
    p = s / s.sum().clamp_min(1e-12)
    spread = s.sum() > RELATIVE_SPREAD * torch.linalg.norm(z)  # else the rows differ by rounding alone
    out["effective_rank"] = torch.where(spread, torch.exp(-(p * p.clamp_min(1e-12).log()).sum()), torch.zeros(()))
    if codes is not None:
        codes = codes.detach().float()
        mean = codes.mean(0)
        out["code_entropy"] = -(mean * mean.clamp_min(1e-12).log()).sum() / math.log(codes.shape[1])
        used = torch.zeros(codes.shape[1], device=codes.device).index_fill_(0, codes.argmax(1), 1.0)
        out["prototype_usage"] = used.mean()
    return {name: torch.where(finite, value, torch.full_like(value, float("nan"))) for name, value in out.items()}


def collapsing(metrics):
    """The names of the logged diagnostics (floats) below their collapse threshold."""
    return [name for name, limit in THRESHOLDS.items() if name in metrics and metrics[name] < limit]
