import torch

from tasks.training.augment import GlyphAugment


def glyph_batch():
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 8:20, 12:16] = 1.0  # a vertical bar
    return x


IDENTITY = dict(crop_scale=(1, 1), crop_ratio=(1, 1), rotation=0, shear=0, translate=0, elastic=0, noise=0)


def test_identity_parameters_reproduce_the_image():
    aug = GlyphAugment(**IDENTITY, dilate=0, gain=0)
    x = glyph_batch()
    assert torch.allclose(aug(x, torch.Generator().manual_seed(0)), x, atol=1e-5)


def test_ink_jitter_thickens_strokes_by_one_pixel_and_scales_intensity_per_image():
    x = glyph_batch()
    thick = torch.zeros_like(x)
    thick[:, :, 7:21, 11:17] = 1.0  # the bar grown by one pixel on every side: a 3×3 dilation
    always = GlyphAugment(**IDENTITY, dilate=1, gain=0)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(always, thick, atol=1e-5)
    out = GlyphAugment(**IDENTITY, dilate=0.5, gain=0.5)(x, torch.Generator().manual_seed(1))
    for image in out:  # each image: the bar or the thick bar, times its own factor in [0.5, 1]
        factor = image.max()
        assert 0.5 <= factor <= 1
        assert any(torch.allclose(image, factor * shape, atol=1e-5) for shape in (x[0], thick[0]))
    factors = out.flatten(1).amax(1)
    widths = (out[:, 0, 14] > 0).sum(1)
    assert len(set(factors.tolist())) == len(out) and set(widths.tolist()) == {4, 6}


def test_same_seed_same_views_other_seed_other_views():
    aug, x = GlyphAugment(), glyph_batch()
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.01
    assert a.min() >= 0 and a.max() <= 1


def test_each_image_of_a_batch_gets_its_own_transform_and_keeps_ink():
    aug, x = GlyphAugment(noise=0), glyph_batch()
    out = aug(x, torch.Generator().manual_seed(0))
    flat = out.flatten(1)
    assert all((flat[0] - flat[i]).abs().sum() > 1 for i in range(1, 8))
    ink = flat.sum(1)
    assert (ink > 0.3 * x.flatten(1).sum(1)).all()  # the crop keeps most of a centred glyph
