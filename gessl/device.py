"""Choosing the torch device from the ``--device`` flag, and how a training step uses it."""
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from tasks.common.errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def resolve_device(name):
    """``auto`` → CUDA when a GPU is visible, else CPU; ``cuda`` without a GPU is a ``UserError``."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def clock(device, sync=True):
    """``time.perf_counter()``, after ``device``'s queued work is done when it is a GPU and ``sync``."""
    if sync and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def resolve_amp(name, device):
    """The autocast dtype of ``--amp`` (None: off); ``auto`` is bf16 on a CUDA GPU that supports it, else off."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return AMP_DTYPES[name]


@dataclass(frozen=True)
class Placement:
    """Where and how a training step computes: ``device``, ``channels_last`` images, ``amp`` dtype (None: fp32).

    On CUDA, batches leave pinned memory with non-blocking copies, so the host queues the step's
    kernels without waiting for the transfer.
    """

    device: torch.device
    channels_last: bool = False
    amp: torch.dtype = None

    @classmethod
    def from_config(cls, cfg, device):
        """The placement of ``--channels-last`` (auto: on for CUDA) and ``--amp`` on ``device``."""
        channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda")
        return cls(device, channels_last, resolve_amp(cfg.amp, device))

    def put(self, x):
        """``x`` on the device: from pinned memory with a non-blocking copy when that is a GPU."""
        if self.device.type == "cuda" and x.device.type == "cpu":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    def layout(self, images):
        """``images`` [B, C, H, W] in the memory layout of the run."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def autocast(self):
        """The mixed-precision context of the training step (a no-op when ``amp`` is None)."""
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp else nullcontext()
