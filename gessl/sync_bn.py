"""``--sync-bn``: BatchNorm whose training statistics span the batch of every process.

Under DistributedDataParallel each process normalises its own share of the batch unless told
otherwise (as in solo-learn, where SyncBatchNorm is an option). With equal shares, the statistics
of the whole batch follow from each process's per-channel mean μ_r and biased variance σ²_r::

    μ = mean_r μ_r,      σ² = mean_r σ²_r + mean_r (μ_r − μ)²

(the within and between parts of the variance). The pairs (μ_r, σ²_r) travel through the shared
``baselines.distributed.gather``, so gradients flow to every process's activations and training
equals one process on the combined batch. Unlike ``torch.nn.SyncBatchNorm`` this runs on CPU
(gloo) as well as CUDA; it costs one small all-gather per layer and forward pass. In eval mode,
with one process or inside ``per_process()`` it is plain BatchNorm.
"""
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from baselines.distributed import gather, gathering


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over the batch of every process (see the module docstring), for inputs [N, C, ...]."""

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x):
        if not (self.training and gathering()):
            return super().forward(x)
        self._check_input_dim(x)
        var, mean = torch.var_mean(x.float(), dim=[0, *range(2, x.dim())], unbiased=False)
        shares = gather(torch.stack([mean, var])[None])  # [processes, 2, C]
        mean = shares[:, 0].mean(0)
        var = shares[:, 1].mean(0) + (shares[:, 0] - mean).square().mean(0)
        if self.track_running_stats:
            self._update_running_stats(mean, var, count=len(shares) * x.numel() // x.shape[1])
        shape = [1, -1] + [1] * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out

    @torch.no_grad()
    def _update_running_stats(self, mean, var, count):
        """As BatchNorm: r ← (1 − m) r + m s, with the unbiased variance, m = 1/batches when momentum is None."""
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_((var * count / max(count - 1, 1)).to(self.running_var.dtype), momentum)


def convert_sync_batchnorm(module):
    """``module`` with every BatchNorm layer replaced by a ``SyncBatchNorm`` sharing its parameters and buffers."""
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        synced = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        synced.training = module.training
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            setattr(synced, name, tensor)
        return synced
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child))
    return module
