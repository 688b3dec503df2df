"""GeSSL around your own model and loss, in a plain PyTorch loop (docs/api.md, example a).

Any ``nn.Module`` whose ``forward(batch)`` returns an ``SSLOutput`` (its loss and the projections of
the two views) can be wrapped: ``step(model, batch)`` back-propagates GeSSL's outer loss into ``.grad``
and returns the logs; your optimiser steps. ``python examples/gessl_loop.py --steps 20``
"""
import argparse

import torch
import torch.nn.functional as F
from torch import nn

from gessl import GeSSL, SSLOutput


class TinyContrastive(nn.Module):
    """A small conv encoder and projector, with an InfoNCE loss between the two views written here."""

    def __init__(self, temperature=0.2):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.projector = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))
        self.temperature = temperature

    def forward(self, batch):
        z1, z2 = (self.projector(self.encoder(view)) for view in batch["views"])
        logits = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T / self.temperature
        same = torch.arange(len(z1), device=z1.device)  # image i's other view is the positive
        loss = (F.cross_entropy(logits, same) + F.cross_entropy(logits.T, same)) / 2
        return SSLOutput(loss=loss, projections=(z1, z2))


def augment(x, gen):
    """A random shift of up to 2 pixels and a little noise."""
    dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
    return (x.roll((dx, dy), dims=(2, 3)) + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(256, 1, 28, 28)  # your data here
    model = TinyContrastive()
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = GeSSL(inner_lr=1e-3, tasks_per_step=2)  # options: docs/api.md
    for i in range(args.steps):
        x = images[torch.randint(len(images), (args.batch_size,), generator=gen)]
        batch = {"views": [augment(x, gen), augment(x, gen)]}
        optimizer.zero_grad()
        logs = step(model, batch)
        optimizer.step()
        print(f"step {i + 1}: loss {logs['loss'].item():.4f}  sigma {logs['sigma_kl'].item():.2e}")
    moved = sum((p.detach() - p0).square().sum() for p, p0 in zip(model.parameters(), start)).sqrt()
    print(f"parameters moved by {moved.item():.4g}")


if __name__ == "__main__":
    main()
