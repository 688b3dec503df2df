"""Backbones (feature extractors) and their registry.

- ``conv4``: the 4-block few-shot network (Vinyals et al. 2016; Snell et al. 2017): each block is
  3×3 conv (64 channels) → BatchNorm → ReLU → 2×2 max-pool; the output is flattened
  (64-d for 28×28 inputs).
- ``resnet18``: torchvision's ResNet-18 with the CIFAR stem used by solo-learn and SimCLR's CIFAR
  experiments: a 3×3 stride-1 first convolution and no max-pool; the classifier is removed (512-d).

Every backbone maps ``[B, C, H, W]`` floats to ``[B, out_dim]`` features and carries ``out_dim``.
"""
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import resnet18 as tv_resnet18

from tasks.errors import UserError
from tasks.io import atomic_path


class Conv4(nn.Module):
    """Four conv blocks of ``width`` channels; output dimension depends on the input size."""

    def __init__(self, in_channels=1, width=64, image_size=28):
        super().__init__()
        blocks, c = [], in_channels
        for _ in range(4):
            blocks += [nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = width
        self.features = nn.Sequential(*blocks)
        side = image_size
        for _ in range(4):
            side //= 2
        self.out_dim = width * max(side, 1) ** 2

    def forward(self, x):
        return self.features(x).flatten(1)


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


def eval_forward(net, x):
    """``net(x)`` for a network in eval mode, with less work where its layers run in sequence.

    In each ``nn.Sequential`` (nested ones too, and conv4's ``features``) a convolution followed
    by a BatchNorm in eval mode runs as one convolution (``fold_batchnorm``), and a ReLU followed
    by a max-pool runs after it: the two commute, max(relu(v)) = relu(max(v)), and the ReLU then
    touches a 4× smaller tensor. Equal to ``net(x)`` up to float rounding. Any other module runs
    its own forward (ResNet-18, MobileNetV2's inverted residuals, non-eval BatchNorm).
    """
    if isinstance(net, Conv4):
        return eval_forward(net.features, x).flatten(1)
    if type(net).forward is not nn.Sequential.forward:
        return net(x)
    layers, i = list(net), 0
    while i < len(layers):
        layer, after = layers[i], layers[i + 1] if i + 1 < len(layers) else None
        if type(layer) is nn.Conv2d and _foldable(after):
            x, i = layer._conv_forward(x, *fold_batchnorm(layer, after)), i + 2
        elif type(layer) is nn.ReLU and type(after) is nn.MaxPool2d and not after.return_indices:
            x, i = F.relu(after(x), inplace=True), i + 2
        else:
            x, i = eval_forward(layer, x), i + 1
    return x


def _foldable(bn):
    return type(bn) is nn.BatchNorm2d and not bn.training and bn.running_var is not None


def fold_batchnorm(conv, bn):
    """Weight and bias of the one convolution that does ``bn(conv(x))`` with ``bn`` in eval mode::

        s = γ / √(σ² + ε),   w' = w · s,   b' = (b − μ) · s + β

    per output channel, with μ, σ² the running statistics (b = 0 without a conv bias, γ = 1 and
    β = 0 without affine parameters).
    """
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean if conv.bias is None else conv.bias - bn.running_mean
    bias = shift * scale if bn.bias is None else torch.addcmul(bn.bias, shift, scale)
    return conv.weight * scale[:, None, None, None], bias


def build_backbone(name, in_channels=1, image_size=28):
    """Instantiate the backbone registered under ``name``."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name](in_channels=in_channels, image_size=image_size)


def save_backbone(backbone, name, in_channels, image_size, path):
    """Export the encoder alone (no heads, no optimiser state), loadable with ``load_backbone``."""
    payload = {"format": "gessl-backbone/1", "name": name, "in_channels": in_channels,
               "image_size": image_size, "state_dict": backbone.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_backbone(path, map_location="cpu"):
    """Load a backbone written by ``save_backbone``; a missing or corrupt file is a ``UserError``."""
    payload = load_torch_file(path, "backbone", map_location)
    if not isinstance(payload, dict) or payload.get("format") != "gessl-backbone/1":
        raise UserError(f"{path} is not a gessl backbone file; export one with `python -m gessl.train`")
    net = build_backbone(payload["name"], payload["in_channels"], payload["image_size"])
    net.load_state_dict(payload["state_dict"])
    return net, payload


def load_torch_file(path, what, map_location="cpu"):
    """``torch.load`` with one-line errors for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no {what} file at {path}; train a run first with `python -m gessl.train --out DIR`")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise UserError(f"{what} file {path} is corrupt or unreadable ({type(exc).__name__}); "
                        f"delete it and train again") from None
