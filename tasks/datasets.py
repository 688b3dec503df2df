"""Dataset registry: name → loader of a labelled split as in-memory arrays.

A loader takes ``(split, root, image_size)`` and returns ``(images, labels)``: uint8 images
``[N, H, W]`` (or ``[N, C, H, W]``) and int64 labels numbered 0..C−1 within the split. Splits:
``background`` (pre-training classes) and ``evaluation`` (classes never seen in training).
"""
from tasks.errors import UserError
from tasks.glyphs import load_glyphs

GLYPH_SEED = 0  # the embedded dataset is the same for every run, whatever the training seed


def _glyphs(split, root, image_size):
    return load_glyphs(root=root or None, size=image_size, seed=GLYPH_SEED).subset(split)


DATASETS = {"glyphs": _glyphs}


def load_split(name, split, root="", image_size=28):
    """Load ``split`` of the dataset registered under ``name``."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name](split, root, image_size)
