"""Training on several processes: ``torchrun --nproc_per_node N -m gessl.train ...``.

torchrun starts N copies of the command with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their
environment; ``Processes.from_environment()`` reads them (one process when they are absent) and
``Processes.group(device)`` joins the process group (gloo on CPU, nccl on CUDA with process r on GPU
``LOCAL_RANK``) and leaves it at the end. How the work is shared:

- every process draws and augments the step's global batch (``--batch-size`` images) as one
  process would and trains on its own equal share, in rank order (``Processes.shard``);
- the plain step runs through DistributedDataParallel, whose hooks average the gradients during the
  backward pass; the losses that compare samples gather them (``baselines.distributed``) and, with
  ``--sync-bn``, so does BatchNorm (``gessl.sync_bn``): the step equals one process on the whole
  batch. Without ``--sync-bn`` each process normalises its own share, as in solo-learn;
- GeSSL runs the model functionally (``torch.func.functional_call``, ``higher``). DDP's reducer
  averages only a backward pass that follows a forward pass through the DDP wrapper, so it never sees
  GeSSL's outer gradients (two gloo processes whose functional backward gave 2 and 4 kept 2 and 4).
  So GeSSL is not wrapped: each process adapts to its own ``--tasks-per-step`` / N tasks, with
  losses that do not gather (a task lives on one process), and GeSSL averages the outer gradients
  itself with one all-reduce (``average_gradients``): the step equals one process running all the
  tasks. Buffers (BatchNorm running statistics, queues) follow each process's own tasks;
- only rank 0 writes (config, metrics, checkpoints, backbone) and shows the progress bar; logged
  values are averaged over processes; on ``--resume`` every process loads the checkpoint;
- a request to stop (torchrun passes Ctrl-C or SIGTERM on to every process) is agreed on after
  every step (``Processes.any``, on the CPU), so all the processes stop after the same step.

``torchrun ... -m gessl.evaluate`` shares its embedding and episodes the same way (``shard``, then
``gather_shares``); see ``gessl.evaluate``.
"""
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from baselines.distributed import world_size
from baselines.shares import share
from gessl.shares import check_tasks
from tasks.common.errors import UserError

_CPU_GROUP = {}  # "group": the gloo group of Processes.any under nccl (None: the default group is gloo)


def average_gradients(tensors):
    """Replace each tensor (gradients) by its mean over processes, with one all-reduce; alone, a no-op."""
    world = world_size()
    if world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    for t, mean in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(mean.view_as(t))


@dataclass(frozen=True)
class Processes:
    """This process's place among the ``world`` processes of a run: ``rank`` and ``local_rank`` (its GPU)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls):
        """The place torchrun gave this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); alone without them."""
        try:
            return cls(*(int(os.environ.get(name, default)) for name, default in
                         [("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)]))
        except ValueError:
            raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; start several processes "
                            "with `torchrun --nproc_per_node N -m gessl.train ...` (or gessl.evaluate)") from None

    @property
    def main(self):
        """Whether this is rank 0, the process that writes files and shows progress."""
        return self.rank == 0

    def shard(self, n):
        """This process's contiguous share of ``n`` items, in rank order (a global batch, a split's
        images, episodes): ``n // world`` items, one more for the first ``n % world`` processes, as
        ``torch.tensor_split`` shares them; equal shares when ``world`` divides ``n``."""
        return share(n, self.world, self.rank)

    def gather_shares(self, share):
        """The whole of which each process holds ``share`` (a tensor, its rows of the whole; shares may
        differ in rows, even have none): every share concatenated along dim 0 in rank order, on the
        CPU of every process. Alone, ``share`` itself.

        Not differentiable (for losses, ``baselines.distributed.gather``). The row counts travel
        first, then every share padded to the largest, in one ``all_gather``.
        """
        if self.world == 1:
            return share
        shapes = [None] * self.world
        dist.all_gather_object(shapes, (tuple(share.shape), share.dtype))
        shape, dtype = max(shapes, key=lambda s: s[0][0])  # a share with rows says their shape and dtype
        padded = torch.zeros(shape, dtype=dtype, device=_collective_device())
        if len(share):
            padded[:len(share)] = share
        parts = [torch.empty_like(padded) for _ in shapes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:s[0]] for part, (s, _) in zip(parts, shapes)]).cpu()

    def barrier(self):
        """Wait until every process gets here (nothing alone)."""
        if self.world > 1:
            dist.barrier()

    def place(self, device):
        """The device of this process: GPU ``local_rank`` when ``device`` is CUDA."""
        if device.type != "cuda" or self.world == 1:
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise UserError(f"process {self.rank} wants GPU {self.local_rank} but {torch.cuda.device_count()} "
                            f"are visible; start at most that many processes per machine")
        return torch.device("cuda", self.local_rank)

    @contextmanager
    def group(self, device):
        """Join the process group for the block (gloo on CPU, nccl on CUDA); nothing for one process."""
        if self.world == 1:
            yield
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _CPU_GROUP["group"] = dist.new_group(backend="gloo") if device.type == "cuda" else None
        try:
            yield
        finally:
            _CPU_GROUP.clear()
            dist.destroy_process_group()

    def any(self, flag):
        """Whether ``flag`` holds on any process: one all-reduce of a CPU number (gloo), so a GPU is
        not made to wait; alone, ``flag``."""
        if self.world == 1:
            return bool(flag)
        value = torch.tensor([int(bool(flag))])
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_CPU_GROUP["group"])
        return bool(value.item())

    def wrap(self, model, device, broadcast_buffers=True):
        """``model`` in DistributedDataParallel when there are several processes, else ``model``;
        ``broadcast_buffers``: copy rank 0's buffers to the others before each forward pass."""
        if self.world == 1:
            return model
        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                       forward_sync_buffers=broadcast_buffers)

    def average(self, logs):
        """``logs`` (tensors or numbers) as floats averaged over processes, with one all-reduce."""
        values = torch.tensor([float(v) for v in logs.values()], dtype=torch.float64)
        if self.world > 1:
            values = values.to(_collective_device())
            dist.all_reduce(values)
            values = values.cpu() / self.world
        return dict(zip(logs, values.tolist()))


def _collective_device():
    """Where the default group's collectives take tensors: the current GPU under nccl, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def check_world(cfg, world, episodic):
    """Fail early on a run that ``world`` processes cannot share (``episodic``: the base method trains on episodes)."""
    if world == 1:
        return
    if episodic:
        raise UserError(f"--base {cfg.base} trains on one episode per step, which is not shared between "
                        f"processes; run it in one process")
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} cannot be shared equally by {world} processes; "
                        f"use a multiple of {world}")
    if cfg.meta == "gessl" and cfg.tasks_per_step % world:
        raise UserError(f"under --meta gessl each of the {world} processes adapts to its own tasks: "
                        f"--tasks-per-step {cfg.tasks_per_step} must be a multiple of {world} (or 0, one per process)")
    if cfg.meta == "gessl":
        check_tasks(cfg.batch_size, cfg.tasks_per_step or world, cfg.support_ratio, f"--batch-size {cfg.batch_size}")
