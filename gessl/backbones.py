"""Backbones (feature extractors) and their registry.

- ``conv4``: the 4-block few-shot network (Vinyals et al. 2016; Snell et al. 2017): each block is
  3×3 conv (64 channels) → BatchNorm → ReLU → 2×2 max-pool; the output is flattened
  (64-d for 28×28 inputs).
- ``resnet18``: torchvision's ResNet-18 with the CIFAR stem used by solo-learn and SimCLR's CIFAR
  experiments: a 3×3 stride-1 first convolution and no max-pool; the classifier is removed (512-d).

Every backbone maps ``[B, C, H, W]`` floats to ``[B, out_dim]`` features and carries ``out_dim``.
"""
import hashlib
import io
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18 as tv_resnet18

from tasks.common.errors import UserError
from tasks.common.io import atomic_write_bytes


class Conv4(nn.Sequential):
    """Four conv blocks of ``width`` channels, then a flatten; the output dimension depends on the
    input size. A ``Sequential`` (``features``, ``flatten``), so `tasks.evaluation.frozen.eval_forward` folds it."""

    def __init__(self, in_channels=1, width=64, image_size=28):
        blocks, c = [], in_channels
        for _ in range(4):
            blocks += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = width
        super().__init__(OrderedDict(features=nn.Sequential(*blocks), flatten=nn.Flatten()))
        side = image_size
        for _ in range(4):
            side //= 2
        self.out_dim = width * max(side, 1) ** 2


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem (3×3 conv1, stride 1, no max-pool) and no classifier."""

    def __init__(self, in_channels=1, image_size=28):
        super().__init__()
        net = tv_resnet18(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = net
        self.out_dim = 512

    def forward(self, x):
        return self.net(x)


BACKBONES = {"conv4": Conv4, "resnet18": ResNet18}


def build_backbone(name, in_channels=1, image_size=28):
    """Instantiate the backbone registered under ``name``."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name](in_channels=in_channels, image_size=image_size)


def save_backbone(backbone, name, in_channels, image_size, *paths, step=None):
    """Export the encoder alone (no heads, no optimiser state) to each of ``paths``, loadable with
    ``load_backbone``; ``step``: the training step whose weights these are (None: not known)."""
    payload = {"format": "gessl-backbone/1", "name": name, "in_channels": in_channels,
               "image_size": image_size, "state_dict": backbone.state_dict(), "step": step}
    save_torch_file(payload, *paths)


def load_backbone(path, map_location="cpu"):
    """Load a backbone written by ``save_backbone``: ``(net, payload)``, the payload with the file's
    ``sha256`` (hex) added and ``step`` None when the file has none; a missing or corrupt file, or one
    whose weights are not all finite (a training that diverged), is a ``UserError``."""
    payload = load_torch_file(path, "backbone", map_location, digest=True)
    if not isinstance(payload, dict) or payload.get("format") != "gessl-backbone/1":
        raise UserError(f"{path} is not a gessl backbone file; export one with `python -m gessl.train`")
    broken = not_finite(payload["state_dict"])
    if broken:
        raise UserError(f"{path} holds weights that are not finite ({', '.join(broken[:3])}): its training "
                        f"diverged; train it again with a lower --lr")
    net = build_backbone(payload["name"], payload["in_channels"], payload["image_size"])
    net.load_state_dict(payload["state_dict"])
    return net, {"step": None, **payload}


def not_finite(state):
    """The names of the floating-point tensors of the state dict ``state`` that hold a NaN or an
    infinity (one host synchronisation)."""
    names = [k for k, v in state.items() if v.is_floating_point()]
    if not names:
        return []
    finite = torch.stack([state[k].isfinite().all() for k in names]).tolist()
    return [k for k, ok in zip(names, finite) if not ok]


def save_torch_file(obj, *paths):
    """``torch.save`` of ``obj`` to each of ``paths`` atomically; serialised once, in memory, so that a
    full or read-only disk is a ``tasks.common.io.WriteError`` rather than an error inside torch's zip
    writer."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    for path in paths:
        atomic_write_bytes(path, buffer.getbuffer())


def load_torch_file(path, what, map_location="cpu", digest=False):
    """``torch.load`` with one-line errors for a missing or unreadable file; with ``digest``, a dict
    file gets the ``sha256`` (hex) of the bytes it was read from."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no {what} file at {path}; train a run first with `python -m gessl.train --out DIR`")
    try:
        data = path.read_bytes()
        obj = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        return {**obj, "sha256": hashlib.sha256(data).hexdigest()} if digest and isinstance(obj, dict) else obj
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise UserError(f"{what} file {path} is corrupt or unreadable ({type(exc).__name__}); "
                        f"delete it and train again") from None
