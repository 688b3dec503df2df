"""KanjiVG: the SVG path reader against hand-worked points, the stroke renderer's geometry, the
rendered set (classes, splits, determinism, cache) from a fake wheel in KanjiVG's real format."""
import zipfile

import numpy as np
import pytest

from tasks.common.errors import UserError
from tasks.data import kanjivg
from tasks.data.registry import load_split

HEADER = """<?xml version="1.0" encoding="UTF-8"?>
<!--
Copyright (C) 2009/2010/2011 Ulrich Apel.
This work is distributed under the conditions of the Creative Commons
Attribution-Share Alike 3.0 Licence.
-->
<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.0//EN" "http://www.w3.org/TR/2001/REC-SVG-20010904/DTD/svg10.dtd" [
<!ATTLIST g
xmlns:kvg CDATA #FIXED "http://kanjivg.tagaini.net"
kvg:element CDATA #IMPLIED >
<!ATTLIST path
xmlns:kvg CDATA #FIXED "http://kanjivg.tagaini.net"
kvg:type CDATA #IMPLIED >
]>
<svg xmlns="http://www.w3.org/2000/svg" width="109" height="109" viewBox="0 0 109 109">
<g id="kvg:StrokePaths_{cp:05x}" style="fill:none;stroke:#000000;stroke-width:3;">
<g id="kvg:{cp:05x}" kvg:element="{ch}">
{paths}
</g>
</g>
<g id="kvg:StrokeNumbers_{cp:05x}" style="font-size:8;fill:#808080">
	<text transform="matrix(1 0 0 1 44.50 10.28)">1</text>
</g>
</svg>
"""
STROKES = {  # a few real-looking characters, KanjiVG's path syntax (relative curves, packed numbers)
    0x4E00: ["M11.5,54.5c3.5,0.75,8.25,1,12,0.5c20.12-2.62,48.38-4.5,70.5-4.25"],
    0x4E8C: ["M23.5,29.5c2.5,0.75,5,1,8.5,0.5c11.75-1.5,33-3.5,46.5-3.5",
             "M12.25,80.25c3.75,1,7.5,1.25,11.5,0.75c18.5-2.25,49.38-4.38,72.75-3.75"],
    0x5341: ["M12.25,50.5c3.5,1,7.38,1.12,11,0.75c19.38-2,50.5-4.38,72.75-4.38",
             "M53.25,11.5c1.12,1.12,1.75,3,1.75,4.5c0,6.5,0,80.12,0,89.5"],
    0x4EBA: ["M49.5,10.5c0.12,1.5,0.3,3.9-0.25,6C45.88,33.62,32,73.25,10.75,91.5",
             "M47,36.25C56.5,54,76,81.75,98.25,91.5"],
    0x53E3: ["M21.75,25.75c1.12,1.12,1.75,3,2,4.5c1.25,10.5,3,38.5,3.75,53.5",
             "M24,28c17.62-2,43-4.75,56-5.25c4.25-0.16,5.5,2.38,5,5.5C84.5,33,82,57.5,80.5,75.5",
             "M27,79.5c14.12-1.12,36.75-3.25,53.5-3.75"],
    0x5C71: ["M51.5,14c1.12,1.12,1.75,2.5,1.75,4.25c0,6.5,0,56.25,0,70.5",
             "M19.25,37c1.12,1.12,1.75,2.38,1.75,4.25c0,4.38,0,38.75,0,51.75c0,4.25,2.5,3.75,6.25,3.5"
             "c14.38-1,44.25-3.5,56.75-4",
             "M87.25,35c1.12,1.12,1.75,2.38,1.75,4.25c0,4.38-0.25,43.25-0.25,56.5"],
}


def svg(cp, paths):
    body = "\n".join(f'\t<path id="kvg:{cp:05x}-s{i + 1}" kvg:type="㇐" d="{d}"/>' for i, d in enumerate(paths))
    return HEADER.format(cp=cp, ch=chr(cp), paths=body)


@pytest.fixture
def kanji_root(tmp_path):
    folder = tmp_path / "kanjivg"
    folder.mkdir()
    with zipfile.ZipFile(folder / "kanjivg-20260714-py3-none-any.whl", "w") as z:
        for cp, paths in STROKES.items():
            z.writestr(f"kanji/{cp:05x}.svg", svg(cp, paths))
        z.writestr("kanji/04e00-Kaisho.svg", svg(0x4E00, STROKES[0x4E00]))  # a variant: left out
        z.writestr("kanji/00041.svg", svg(0x41, STROKES[0x4E00]))             # not a kanji: left out
        z.writestr("kanjivg-20260714.dist-info/licenses/COPYING", "CC BY-SA 3.0")
    return tmp_path


def test_svg_paths_become_bezier_splines():
    np.testing.assert_allclose(kanjivg._spline("M10,20c1,2,3,4,5,6"), [[10, 20], [11, 22], [13, 24], [15, 26]])
    # S mirrors the previous second control point (2,2) about the current point (3,3)
    np.testing.assert_allclose(kanjivg._spline("M0,0C1,1,2,2,3,3s4,4,5,5"),
                               [[0, 0], [1, 1], [2, 2], [3, 3], [4, 4], [7, 7], [8, 8]])
    np.testing.assert_allclose(kanjivg._spline("M0,0L3,0"), [[0, 0], [1, 0], [2, 0], [3, 0]])
    np.testing.assert_allclose(kanjivg._spline("m1,1 3,0h3v-3"),  # implicit lineto after a moveto
                               [[1, 1], [2, 1], [3, 1], [4, 1], [5, 1], [6, 1], [7, 1], [7, 0], [7, -1], [7, -2]])
    np.testing.assert_allclose(kanjivg._spline("M0.5.5c1-1,2-2,3-3")[1:], [[1.5, -0.5], [2.5, -1.5], [3.5, -2.5]])
    for bad in ("c1,2,3,4,5,6", "M0,0c1,2,3", "M0,0 Q1,1,2,2", "M0,0M1,1L2,2", "M1,1"):
        assert kanjivg._spline(bad) is None


def test_bezier_polyline_passes_through_the_nodes_and_follows_the_formula():
    spline = np.array([[0, 0], [0, 10], [10, 10], [10, 0], [10, -5], [20, -5], [20, 0]], float)
    line = kanjivg._bezier(spline)
    n = kanjivg._SEGMENT_POINTS
    assert len(line) == 2 * (n - 1) + 1
    np.testing.assert_allclose(line[[0, n - 1, -1]], spline[[0, 3, 6]])
    t = 1 / (n - 1)
    p0, c1, c2, p3 = spline[:4]
    np.testing.assert_allclose(line[1], (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t * t * c2
                               + t ** 3 * p3)


def test_a_horizontal_stroke_is_drawn_horizontally():
    images = kanjivg.draw_samples([kanjivg._spline("M10,54.5L99,54.5")], 28, 6, np.random.default_rng(0))
    assert images.dtype == np.uint8 and images.shape == (6, 28, 28)
    for image in images:
        rows, cols = np.nonzero(image > 64)
        assert image.max() == 255
        assert np.ptp(cols) > 3 * np.ptp(rows)      # wide, thin
        assert 9 <= rows.mean() <= 19               # near the middle, give or take the jitter
    assert len({im.tobytes() for im in images}) == 6  # every writer differs


def test_rendered_set_from_the_wheel(kanji_root):
    data = kanjivg.load_kanjivg(kanji_root, size=16, samples_per_class=3, classes=4, seed=0)
    assert data.images.shape == (12, 16, 16) and data.images.dtype == np.uint8
    assert (data.images.reshape(12, -1).max(1) == 255).all()
    assert set(data.chars) <= {chr(cp) for cp in STROKES} and len(set(data.chars)) == 4
    assert sorted(np.concatenate([data.splits["background"], data.splits["evaluation"]]).tolist()) == [0, 1, 2, 3]
    assert len(data.splits["background"]) == 2
    again = kanjivg.load_kanjivg(kanji_root, size=16, samples_per_class=3, classes=4, seed=0)
    np.testing.assert_array_equal(again.images, data.images)
    assert again.seconds == data.seconds and again.path == data.path and data.path.exists()  # from the cache
    data.path.unlink()
    rendered = kanjivg.load_kanjivg(kanji_root, size=16, samples_per_class=3, classes=4, seed=0)
    np.testing.assert_array_equal(rendered.images, data.images)  # deterministic from the seed
    other = kanjivg.load_kanjivg(kanji_root, size=16, samples_per_class=3, classes=4, seed=1)
    assert not np.array_equal(other.images, data.images)
    images, labels = data.subset("evaluation")
    assert images.shape == (6, 16, 16) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(UserError, match="fewer than the 7 classes"):
        kanjivg.load_kanjivg(kanji_root, size=16, samples_per_class=1, classes=7)


def test_registry_loader_renders_the_default_set(kanji_root, monkeypatch):
    monkeypatch.setattr(kanjivg, "load_kanjivg", lambda root, size: kanjivg.KanjiSet(
        np.zeros((4, size, size), np.uint8), np.array([0, 1, 2, 3]), list("一二三四"),
        {"background": np.array([1, 3]), "evaluation": np.array([0, 2])}))
    images, labels = load_split("kanjivg", "background", kanji_root, image_size=20)
    assert images.shape == (2, 20, 20) and labels.tolist() == [0, 1]


def test_kanjivg_errors(tmp_path, kanji_root):
    with pytest.raises(UserError, match=r"KanjiVG is not installed .*fetch kanjivg") as info:
        kanjivg.load_kanjivg(tmp_path / "empty")
    assert "\n" not in str(info.value)
    wheel = next((kanji_root / "kanjivg").glob("*.whl"))
    good = wheel.read_bytes()
    wheel.write_bytes(good[:len(good) // 2])
    with pytest.raises(UserError, match="not a complete KanjiVG wheel"):
        kanjivg.load_kanjivg(kanji_root, size=16, samples_per_class=1, classes=2)
    wheel.write_bytes(b"<!DOCTYPE html><html></html>")
    with pytest.raises(UserError, match="not a complete KanjiVG wheel"):
        kanjivg.fetch(kanji_root / "other", wheel)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("kanji/04e00.svg", svg(0x4E00, ["M1,1 Q5,5,9,9"]))
        z.writestr("kanji/04e8c.svg", svg(0x4E8C, STROKES[0x4E8C]))
    with pytest.raises(UserError, match="unreadable stroke paths"):
        kanjivg.load_kanjivg(kanji_root, size=16, samples_per_class=1, classes=2)
    with pytest.raises(UserError, match="classes must be an integer >= 2"):
        kanjivg.load_kanjivg(kanji_root, classes=1)
