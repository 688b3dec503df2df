"""Omniglot's files as Lake ships them (tiny fakes in the real format, and the real files in
``../shared/data/omniglot`` when present) and Lake's one-shot runs with their two classifiers."""
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from tasks.data import omniglot
from tasks.data.registry import DATASETS, load_split
from tasks.evaluation.lake import hausdorff_errors, modified_hausdorff, ink_points, nearest_errors
from tests.tasks.data.test_data_readers import HTML, raises_one_line

REAL = Path(os.environ.get("GESSL_TEST_OMNIGLOT", Path(__file__).resolve().parents[4] / "shared/data/omniglot"))
real_files = pytest.mark.skipif(not (REAL / "all_runs.zip").is_file(),
                                reason=f"Omniglot's real files are not at {REAL} (set $GESSL_TEST_OMNIGLOT)")


def drawing(seed):
    """A 105 x 105 black-on-white drawing: a vertical and a horizontal stroke whose place, lengths
    and crossing ``seed`` draws (so drawings differ in shape, not only in place)."""
    rng = np.random.default_rng(seed)
    image = np.full((105, 105), 255, np.uint8)
    y, x = rng.integers(5, 45, 2)
    tall, wide, cross = rng.integers(15, 55), rng.integers(15, 55), rng.integers(0, 15)
    image[y:y + tall, x:x + 5] = 0
    image[y + cross:y + cross + 5, x:x + wide] = 0
    return image


def png(image):
    out = io.BytesIO()
    Image.fromarray(image).convert("1").save(out, format="PNG")  # Omniglot's PNGs are 1-bit
    return out.getvalue()


def write_set(target, top, characters, zipped):
    """Write ``{ALPHABET/characterNN: number}`` with drawers 1-2 as Lake lays a set out."""
    files = {f"{top}/{c}/{n:04d}_{d:02d}.png": png(drawing(n * 10 + d)) for c, n in characters.items() for d in (1, 2)}
    if zipped:
        with zipfile.ZipFile(f"{target}/{top}.zip", "w") as z:
            for name, data in files.items():
                z.writestr(name, data)
    else:
        for name, data in files.items():
            (Path(target) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(target) / name).write_bytes(data)


SMALL1 = {"Greek/character01": 1, "Greek/character02": 2, "Balinese/character01": 3}
SMALL2 = {"Greek/character01": 1, "Greek/character02": 2, "Tagalog/character01": 4, "Tagalog/character02": 5}


def fake_small(root, zipped=True):
    root.mkdir(parents=True, exist_ok=True)
    write_set(root, "images_background_small1", SMALL1, zipped)
    write_set(root, "images_background_small2", SMALL2, zipped=not zipped)  # one zip, one folder
    return root


@pytest.mark.parametrize("zipped", [True, False])
def test_small_sets_are_one_set_with_each_character_once(tmp_path, zipped):
    fake_small(tmp_path, zipped)
    images, labels = load_split("omniglot-small", "background", tmp_path)
    # Balinese/01, Greek/01, Greek/02, Tagalog/01, Tagalog/02: Greek once though in both splits
    assert images.shape == (10, 28, 28) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    found = omniglot.drawings(tmp_path, omniglot.SMALL, [])
    assert found.characters[2] == "Greek/character01" and found.alphabets[2] == "Greek"
    assert found.drawers.tolist() == [1, 2] * 5
    assert DATASETS["omniglot-small"].sizes("background", tmp_path) == (10, 5)
    expected = omniglot.glyph_style(drawing(12) < 128, 28)  # Greek/character01 (number 1), drawer 2
    np.testing.assert_array_equal(images[3], expected)


def test_full_sets_in_torchvisions_folder(tmp_path):
    base = tmp_path / "omniglot-py"
    base.mkdir()
    write_set(base, "images_background", {"Latin/character01": 7, "Latin/character02": 8}, zipped=False)
    write_set(base, "images_evaluation", {"Atlantean/character01": 9}, zipped=True)
    images, labels = load_split("omniglot", "background", tmp_path, image_size=21)
    assert images.shape == (4, 21, 21) and labels.tolist() == [0, 0, 1, 1]
    assert load_split("omniglot", "evaluation", tmp_path)[1].tolist() == [0, 0]
    assert DATASETS["omniglot-small"].installed(tmp_path) is False and DATASETS["omniglot"].installed(tmp_path)


def test_glyph_style_is_the_inverted_area_average_scaled_to_255():
    ink = drawing(3) < 128
    # 105 = 21 x 5: each output pixel is the mean of a 5 x 5 block; then the brightest is 255
    mean = ink.reshape(21, 5, 21, 5).mean(axis=(1, 3))
    expected = np.round(mean * 255 / mean.max())
    out = omniglot.glyph_style(ink, 21)
    assert out.dtype == np.uint8 and out.max() == 255 and out[0, 0] == 0
    assert np.abs(out.astype(float) - expected).max() <= 1  # PIL's box filter rounds on 8 bits


def test_data_folders_are_a_search_path(tmp_path):
    """Real sets are read from whichever folder of the path holds them; the first gets no copy."""
    first, second = tmp_path / "cache", fake_small(tmp_path / "omniglot-files")
    path = f"{first}{os.pathsep}{second}"
    assert DATASETS["omniglot-small"].home(path) == second
    assert load_split("omniglot-small", "background", path)[0].shape == (10, 28, 28)
    assert not first.exists()


def test_missing_and_damaged_files_are_one_line(tmp_path):
    with raises_one_line(r"no images_background_small1.zip or images_background_small1/ in .*; put Omniglot's "
                         r"images_background_small1.zip, images_background_small2.zip"):
        load_split("omniglot-small", "background", tmp_path)
    fake_small(tmp_path)
    loose = tmp_path / "images_background_small2" / "Tagalog" / "loose.png"
    loose.write_bytes(png(drawing(0)))
    with raises_one_line("loose.png is not laid out as ALPHABET/CHARACTER/NNNN_DD.png"):
        load_split("omniglot-small", "background", tmp_path)
    loose.unlink()
    (tmp_path / "images_background_small2" / "Tagalog" / "character01" / "0004_01.png").write_bytes(HTML)
    with raises_one_line("0004_01.png is not a readable image"):
        load_split("omniglot-small", "background", tmp_path)
    archive = tmp_path / "images_background_small1.zip"
    archive.write_bytes(archive.read_bytes()[:300])
    with raises_one_line("truncated or damaged archive"):
        load_split("omniglot-small", "background", tmp_path)


# ------------------------------------------------------------------------------- Lake's runs

PAIRS = [np.random.default_rng(r).permutation(20) for r in range(2)]  # test item m -> training class PAIRS[r][m]


def fake_runs(root, pairs=PAIRS, lines=None):
    """``all_runs.zip`` with a run per entry of ``pairs``: test item m is a new drawing of class pairs[m]."""
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(root / "all_runs.zip", "w") as z:
        for r, pair in enumerate(pairs, 1):
            run = f"run{r:02d}"
            for k in range(20):
                z.writestr(f"{run}/training/class{k + 1:02d}.png", png(drawing(100 * r + k)))
            for m, k in enumerate(pair):
                shifted = np.roll(drawing(100 * r + k), 2, axis=1)  # the same strokes, 2 pixels on
                z.writestr(f"{run}/test/item{m + 1:02d}.png", png(shifted))
            text = lines or "".join(f"{run}/test/item{m + 1:02d}.png {run}/training/class{k + 1:02d}.png\n"
                                    for m, k in enumerate(pair))
            z.writestr(f"{run}/class_labels.txt", text)
    return root


def test_runs_are_laid_out_as_class_labels_pairs_them(tmp_path):
    fake_runs(tmp_path)
    images, labels = load_split("omniglot-lake", "runs", tmp_path)
    assert images.shape == (80, 28, 28) and DATASETS["omniglot-lake"].sizes("runs", tmp_path) == (80, 40)
    for r, pair in enumerate(PAIRS):
        assert labels[40 * r:40 * r + 20].tolist() == list(range(20 * r, 20 * r + 20))
        assert labels[40 * r + 20:40 * r + 40].tolist() == (20 * r + pair).tolist()
        for m, k in enumerate(pair):  # test item m is class k's drawing, moved
            item = omniglot.glyph_style(np.roll(drawing(100 * (r + 1) + k), 2, axis=1) < 128, 28)
            np.testing.assert_array_equal(images[40 * r + 20 + m], item)


def test_nearest_errors_count_the_items_whose_nearest_training_image_is_not_their_pair():
    labels = np.concatenate([np.r_[np.arange(20), 20 * 0 + PAIRS[0]], np.r_[20 + np.arange(20), 20 + PAIRS[1]]])
    features = torch.eye(20)[labels % 20] + 0.01 * torch.randn(40 * 2, 20, generator=torch.Generator().manual_seed(0))
    assert nearest_errors(features, labels).tolist() == [0.0, 0.0]
    features[20 + 3] = features[20 + 4]  # run 0: item 3 now looks like item 4's class
    features[40 + 20:40 + 25] = -features[40 + 20:40 + 25]  # run 1: five items far from every class
    assert nearest_errors(features, labels).tolist() == [5.0, 25.0]


def test_modified_hausdorff_is_the_larger_mean_nearest_distance():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 2)), rng.normal(size=(45, 2)) + 0.5
    d = cdist(a, b)
    expected = max(d.min(1).mean(), d.min(0).mean())  # Dubuisson & Jain 1994
    assert modified_hausdorff((a, cKDTree(a)), (b, cKDTree(b))) == pytest.approx(expected, rel=1e-12)
    ink = np.zeros((5, 5), bool)
    ink[1, 1] = ink[3, 3] = True
    np.testing.assert_allclose(ink_points(ink)[0], [[-1, -1], [1, 1]])  # centred on the mean


def test_hausdorff_pixels_find_the_moved_drawings(tmp_path):
    fake_runs(tmp_path)
    assert hausdorff_errors(str(DATASETS["omniglot-lake"].home(tmp_path))).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("lines, problem", [
    ("run01/test/item01.png run01/training/class01.png\n", "is not 20 lines"),
    ("".join(f"run01/test/item{m:02d}.png run01/training/class01.png\n" for m in range(1, 21)),
     "does not pair items 01-20 one to one"),
])
def test_bad_class_labels_are_one_line(tmp_path, lines, problem):
    fake_runs(tmp_path, pairs=PAIRS[:1], lines=lines)
    with raises_one_line(f"run01/class_labels.txt {problem}"):
        load_split("omniglot-lake", "runs", tmp_path)


# ------------------------------------------------------------------------ the real files

@real_files
def test_real_files_counts_characters_drawers_and_runs():
    small = omniglot.drawings(REAL, omniglot.SMALL, [])
    assert len(set(small.characters)) == 242 and len(small.files) == 4840
    assert len(set(small.alphabets)) == 8
    assert all(sorted(small.drawers[np.array(small.characters) == c].tolist()) == list(range(1, 21))
               for c in set(small.characters))
    assert len(set(omniglot.drawings(REAL, ("small1",), []).characters)) == 136
    assert len(set(omniglot.drawings(REAL, ("small2",), []).characters)) == 156
    images, labels = load_split("omniglot-lake", "runs", REAL)
    assert images.shape == (800, 28, 28) and len(set(labels.tolist())) == 400
    with zipfile.ZipFile(REAL / "all_runs.zip") as z:
        line = z.read("run01/class_labels.txt").decode().split()
    # run01's first test item is paired with the training image the file names
    assert labels[20] == int(line[1].split("class")[1][:2]) - 1


@real_files
def test_real_runs_pixel_baseline_is_lakes_number():
    """Lake's demo prints 38.8 % for the modified-Hausdorff classifier on these runs."""
    errors = hausdorff_errors(str(DATASETS["omniglot-lake"].home(REAL)))
    assert len(errors) == 20 and errors.mean() == pytest.approx(38.75)
