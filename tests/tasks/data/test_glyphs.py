"""The glyph data set: classes, splits, images, determinism, cache, preview and CLI."""
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.common.errors import UserError
from tasks.data import glyphs
from tasks.data.fonts import matplotlib_fonts
from tasks.data.roots import data_root

REPO = Path(__file__).resolve().parents[3]
TWO_FONTS = [f for f in matplotlib_fonts() if Path(f).name in ("DejaVuSans.ttf", "DejaVuSerif.ttf")]
SMALL = {"size": 16, "samples_per_class": 3, "progress": False, "_fonts": TWO_FONTS}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("glyphs")
    return root, glyphs.load_glyphs(root=root, **SMALL)


def test_same_seed_same_data_other_seed_other_split(small, tmp_path):
    _, first = small
    again = glyphs.load_glyphs(root=tmp_path / "a", **SMALL)
    np.testing.assert_array_equal(first.images, again.images)
    assert first.classes == again.classes
    other = glyphs.load_glyphs(root=tmp_path / "b", seed=1, **SMALL)
    assert not np.array_equal(first.images, other.images)
    assert {k: v.tolist() for k, v in first.splits.items()} != {k: v.tolist() for k, v in other.splits.items()}


def test_draw_seed_redraws_the_same_classes_and_split(small, tmp_path):
    root, first = small
    heldout = glyphs.load_glyphs(root=root, draw_seed=5, **SMALL)
    assert heldout.classes == first.classes and heldout.path != first.path
    assert {k: v.tolist() for k, v in heldout.splits.items()} == {k: v.tolist() for k, v in first.splits.items()}
    np.testing.assert_array_equal(heldout.labels, first.labels)
    same = [np.array_equal(a, b) for a, b in zip(first.images, heldout.images)]
    assert sum(same) < len(same) / 10  # new jitter for (almost) every drawing
    assert glyphs.load_glyphs(root=root, draw_seed=0, **SMALL).path == first.path  # draw_seed = seed: the default


def test_images_and_labels(small):
    _, data = small
    assert data.images.dtype == np.uint8 and data.images.shape[1:] == (16, 16)
    assert (data.images.reshape(len(data.images), -1).max(1) == 255).all()  # every image has ink
    border = np.concatenate([data.images[:, 0], data.images[:, -1], data.images[:, :, 0], data.images[:, :, -1]], 1)
    assert (border == 0).mean() > 0.9  # glyphs are centred on a black background
    assert (np.bincount(data.labels) == 3).all() and len(np.bincount(data.labels)) == len(data.classes)


def test_splits_partition_the_classes_by_script(small, glyph_root):
    for data in (small[1], glyphs.load_glyphs(root=glyph_root, progress=False)):
        background, evaluation = (set(data.splits[k].tolist()) for k in ("background", "evaluation"))
        assert not background & evaluation and background | evaluation == set(range(len(data.classes)))
        scripts = {k: {data.classes[c][0] for c in data.splits[k]} for k in ("background", "evaluation")}
        assert not scripts["background"] & scripts["evaluation"]
        share = len(background) / len(data.classes)
        assert 0.5 < share <= 0.65
        images, labels = data.subset("evaluation")
        assert sorted(set(labels.tolist())) == list(range(len(evaluation)))
        assert len(images) == sum(np.isin(data.labels, list(evaluation)))
    with pytest.raises(UserError, match="unknown glyph split"):
        data.subset("test")


def test_classes_are_letters_digits_or_symbols_and_one_per_shape(glyph_root):
    data = glyphs.load_glyphs(root=glyph_root, progress=False)
    categories = {unicodedata.category(ch) for _, ch in data.classes}
    assert categories <= {"Lu", "Ll", "Lt", "Lo", "Nd", "Nl", "No", "Sm", "So", "Sc"}
    chars = {ch for _, ch in data.classes}
    assert "A" in chars and "\u0391" not in chars and "\u0410" not in chars  # Latin A = Greek Alpha = Cyrillic A
    assert not any(unicodedata.decomposition(ch) for ch in chars)  # no accented or compatibility forms
    assert len(data.classes) > 1000 and len({s for s, _ in data.classes}) >= 10


def test_placeholder_glyphs_are_rejected():
    """No code point a font reports is drawn like its .notdef box or like many other code points."""
    name, keys, error = glyphs._scan_font(TWO_FONTS[0])
    assert error is None and keys
    counts = np.unique(list(keys.values()), return_counts=True)[1]
    assert counts.max() <= glyphs._PLACEHOLDER_SHARE
    font = glyphs.ImageFont.truetype(TWO_FONTS[0], glyphs._CHECK_EM)
    notdef = glyphs._ink_key(glyphs._ink(font, "\U0010FFFD"))
    assert notdef not in set(keys.values())


def test_cache_is_reused_and_a_corrupt_cache_is_regenerated(small):
    root, data = small
    assert data.path.parent == root and data.path.name.startswith("glyphs-v") and data.path.suffix == ".npz"
    cached = glyphs.load_glyphs(root=root, **SMALL)
    np.testing.assert_array_equal(cached.images, data.images)
    assert cached.seconds == pytest.approx(data.seconds)  # read back, not generated again
    data.path.write_bytes(data.path.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="unreadable"):
        again = glyphs.load_glyphs(root=root, **SMALL)
    np.testing.assert_array_equal(again.images, data.images)


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GESSL_DATA", str(tmp_path / "g"))
    assert data_root(None) == tmp_path / "g"
    monkeypatch.delenv("GESSL_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert data_root(None) == tmp_path / "x" / "gessl"
    assert data_root(tmp_path / "r") == tmp_path / "r"


@pytest.mark.parametrize("kwargs", [{"size": 0}, {"samples_per_class": 0}, {"seed": -1}, {"size": True}])
def test_bad_arguments_are_user_errors(kwargs, tmp_path):
    with pytest.raises(UserError, match="must be an integer"):
        glyphs.load_glyphs(root=tmp_path, **kwargs)


def test_preview_grid_grows_with_rows(small, tmp_path):
    _, data = small
    glyphs.preview(data, tmp_path / "a.png", n_classes=4, n_per_class=3)
    glyphs.preview(data, tmp_path / "b.png", n_classes=8, n_per_class=3)
    a, b = Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")
    assert a.format == "PNG" and a.width == b.width and b.height == 2 * a.height


def test_cli_info_and_bad_preview(glyph_root, tmp_path):
    env = {**os.environ, "GESSL_DATA": str(glyph_root)}
    info = subprocess.run([sys.executable, "-m", "tasks.data.glyphs", "info"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert info.returncode == 0 and "background:" in info.stdout and "evaluation:" in info.stdout
    bad = subprocess.run([sys.executable, "-m", "tasks.data.glyphs", "preview", "--classes", "0", "--out",
                          str(tmp_path / "x.png")], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and len(bad.stderr.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_the_cli_reads_the_set_from_the_data_root_it_is_given(glyph_root, capsys):
    assert glyphs.main(["info", "--data-root", str(glyph_root)]) == 0
    assert f"cache: {glyph_root}/glyphs-v" in capsys.readouterr().out
