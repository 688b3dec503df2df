"""The one gather helper of the losses that compare a sample with other samples of the batch.

Under DistributedDataParallel each process holds a slice of the global batch; SimCLR's negatives,
the batch statistics of Barlow Twins and VICReg, SwAV's and MUSIC's batch distributions must span
all of it. ``gather(x)`` concatenates every process's ``x`` along the first dimension, in rank
order, with a gradient: its backward sums the gradients all processes send to each slice
(``torch.distributed.nn.functional.all_gather``). A loss computed on the gathered batch is then the
same number on every process, each process's gradient is world_size × its share of ∂L/∂θ, and
DDP's average over processes gives exactly the single-process gradient of the concatenated batch
(checked by tests/baselines/test_distributed.py with two gloo processes).

Without an initialised process group (one process, the common case) ``gather`` returns ``x``; so it
does inside ``per_process()``, where each process's losses see its own samples only (GeSSL: a task
lives on one process, and its inner loop differentiates the loss of that process's images alone).
"""
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def world_size():
    """Number of processes of the default group, 1 when not distributed."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


_per_process = False  # set by ``per_process()``


@contextmanager
def per_process():
    """Within this block ``gather(x)`` returns ``x``: the losses span this process's samples only."""
    global _per_process
    previous, _per_process = _per_process, True
    try:
        yield
    finally:
        _per_process = previous


def gathering():
    """Whether ``gather`` communicates: several processes and not inside ``per_process()``."""
    return not _per_process and world_size() > 1


def gather(x):
    """``x`` of every process concatenated along dim 0 in rank order, differentiably."""
    if not gathering():
        return x
    return torch.cat(dist_fn.all_gather(x))
