"""Batched, seeded augmentations for grayscale glyphs, run as tensor work on any device.

One ``grid_sample`` per batch applies, per image, a random resized crop (scale and aspect), a small
affine (rotation, shear, translation) and an elastic distortion (a smooth random displacement field,
Simard et al. 2003); then the ink jitter: with probability ``dilate`` the strokes are thickened by a
3×3 maximum filter (a grey-scale dilation), and the ink's intensity is scaled by a factor drawn from
U(1 − ``gain``, 1); then Gaussian pixel noise.

The ink jitter is the glyphs' counterpart of SimCLR's colour distortion (Chen et al., ICML 2020, §3:
without it, two crops of an image are told apart by their colour histograms, a shortcut that
spoils the features). Two views of a glyph share its stroke weight and ink mass, and a font's
weight is what most separates two renderings of one character, so without the jitter the methods
learn stroke weight (the backbone's first principal component follows the ink mass), and the
jitter removes that shortcut without changing the scores on Omniglot's handwriting, drawn with one
pen width (``docs/bases.md``, 'The shared cause: the features learnt stroke weight'). Both at 0 draw no random numbers, so the views are those of the augmentation
without the jitter. All randomness comes from the ``torch.Generator``
passed in, so a training step is reproducible from its seed (this is what makes ``--resume`` exact).
The random numbers are drawn on the generator's device: a generator on the images' GPU keeps the
whole augmentation on the GPU, with no copy from the host and no wait for it (a CPU generator with
GPU images still works, at the cost of those copies).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class GlyphAugment:
    """Parameters of the glyph augmentation (the defaults are the project's choice for 28×28 glyphs)."""

    crop_scale: tuple = (0.6, 1.0)   # area of the crop relative to the image
    crop_ratio: tuple = (0.8, 1.25)  # aspect ratio of the crop
    rotation: float = 15.0           # degrees, uniform in ±rotation
    shear: float = 10.0              # degrees, uniform in ±shear
    translate: float = 0.1           # fraction of the image, uniform in ±translate
    elastic: float = 0.04            # displacement amplitude (normalised coordinates)
    elastic_grid: int = 4            # coarseness of the displacement field
    dilate: float = 0.5              # probability of thickening the strokes (3×3 maximum filter)
    gain: float = 0.5                # ink intensity scaled by U(1 − gain, 1)
    noise: float = 0.05              # std of additive Gaussian noise

    @classmethod
    def from_config(cls, cfg):
        """The augmentation of a training config (its ``aug_dilate`` and ``aug_gain``)."""
        return cls(dilate=cfg.aug_dilate, gain=cfg.aug_gain)

    def __call__(self, images, generator):
        """Augment ``images`` ([B, C, H, W] floats in [0, 1]) with randomness from ``generator``."""
        b, dev = images.shape[0], images.device

        def uniform(lo, hi, *shape):
            return lo + (hi - lo) * torch.rand(b, *shape, generator=generator, device=generator.device).to(dev)

        area = uniform(*self.crop_scale)
        log_r = uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        sx, sy = torch.sqrt(area * torch.exp(log_r)), torch.sqrt(area / torch.exp(log_r))
        rot = torch.deg2rad(uniform(-self.rotation, self.rotation))
        shear = torch.tan(torch.deg2rad(uniform(-self.shear, self.shear)))
        cos, sin = torch.cos(rot), torch.sin(rot)
        # theta maps output coordinates to input coordinates: rotate · shear · scale, plus a shift
        # that keeps the crop inside the image where possible.
        a11, a12 = cos * sx, (cos * shear - sin) * sy
        a21, a22 = sin * sx, (sin * shear + cos) * sy
        tx = uniform(-1, 1) * ((1 - sx).clamp(min=0) + self.translate)
        ty = uniform(-1, 1) * ((1 - sy).clamp(min=0) + self.translate)
        theta = torch.stack([torch.stack([a11, a12, tx], -1), torch.stack([a21, a22, ty], -1)], 1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        if self.elastic > 0:
            g = self.elastic_grid
            coarse = torch.randn(b, 2, g, g, generator=generator, device=generator.device).to(dev) * self.elastic
            field = F.interpolate(coarse, size=images.shape[-2:], mode="bicubic", align_corners=False)
            grid = grid + field.permute(0, 2, 3, 1)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.dilate > 0:
            thicken = uniform(0, 1).view(b, 1, 1, 1) < self.dilate
            out = torch.where(thicken, F.max_pool2d(out, 3, stride=1, padding=1), out)
        if self.gain > 0:
            out = out * uniform(1 - self.gain, 1).view(b, 1, 1, 1)
        if self.noise > 0:
            out = out + self.noise * torch.randn(out.shape, generator=generator, device=generator.device).to(dev)
        return out.clamp(0, 1)
