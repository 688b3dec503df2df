"""Choosing the torch device from the ``--device`` flag."""
import torch

from tasks.errors import UserError


def resolve_device(name):
    """``auto`` → CUDA when a GPU is visible, else CPU; ``cuda`` without a GPU is a ``UserError``."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
