"""The eval-mode forward pass of a frozen network, with less work than ``net(x)``.

Used wherever a network only extracts features (`frozen_features`): `tasks.evaluation.fewshot.embed` and
DSA's frozen prior.
"""
import torch
from torch import nn
from torch.nn import functional as F

CPU_CHUNK_IMAGES = 128  # images per forward pass on the CPU (see ``frozen_features``)


def frozen_features(net, x):
    """Features [B, D] of images ``x`` through ``net`` in eval mode (best in the channels-last
    layout, like ``x`` here), equal to ``net(x).flatten(1)`` up to float rounding, cheaper on CPU:

    - ``eval_forward``: BatchNorm folded into the convolution before it, ReLU after max-pool;
    - on the CPU, chunks of ``CPU_CHUNK_IMAGES`` images: in eval mode each image's features are
      independent of the others, and a chunk's activations (conv4's largest is 25 MiB for 128
      images of 28 × 28) stay in the cache from one layer to the next instead of going through
      memory (timings: docs/results.md, 'Evaluation speed').
    """
    x = x.contiguous(memory_format=torch.channels_last)
    chunks = x.split(CPU_CHUNK_IMAGES) if x.device.type == "cpu" else [x]
    return torch.cat([eval_forward(net, chunk).flatten(1) for chunk in chunks])


def eval_forward(net, x):
    """``net(x)`` for a network in eval mode, with less work where its layers run in sequence.

    In each ``nn.Sequential`` (nested ones and subclasses too: conv4 is one) a convolution followed
    by a BatchNorm in eval mode runs as one convolution (``fold_batchnorm``), and a ReLU followed
    by a max-pool runs after it: the two commute, max(relu(v)) = relu(max(v)), and the ReLU then
    touches a 4× smaller tensor. Equal to ``net(x)`` up to float rounding. Any other module runs
    its own forward (ResNet-18, MobileNetV2's inverted residuals, non-eval BatchNorm).
    """
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
