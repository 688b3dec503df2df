"""The suite on any backbone (``gessl.evaluate --backbone``, ``gessl.evaluate_backbone``): torchvision
models with their own weights, a factory in the user's module, wrong weights, and the numbers of a
run folder's evaluation."""
import copy
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from analysis.load import Notes, load_episodes, load_results
from gessl import evaluate, evaluate_backbone
from gessl.backbone_eval import adapt_first_conv, reinitialised
from gessl.backbones import Conv4
from gessl.evaluate import evaluate_run
from tasks.common.errors import UserError
from tests.helpers import REPO, jsonl
from tests.tasks.data.test_omniglot import fake_runs, fake_small

TINY = ["--suite", "quick", "--episodes", "4", "--shots", "1", "--queries", "3", "--classes", "6"]
MEASURES = ("run", "dataset", "split", "protocol", "classifier", "ways", "shots", "metric", "value", "ci95")
MYMOD = '''from torch import nn


def make(in_channels=1):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
'''


def measures(records, protocols=("fewshot", "runs", "crowding", "linear", "knn")):
    """The measured values of the records, keyed by model and setting (not by axis, time or version)."""
    return {tuple(r[k] for k in MEASURES[:-2]): (r["value"], r["ci95"]) for r in records if r["protocol"] in protocols}


def perturbed_statistics(net, seed):
    """``net`` with random BatchNorm shifts and running means: its features no longer scale with its input."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
    return net


def grey_resnet18(state):
    """By hand: ResNet-18 with ``state``, no classifier, its first convolution summed over red, green and blue."""
    net = torchvision.models.resnet18()
    if state is not None:
        net.load_state_dict(state)
    conv = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
    conv.weight.data = net.conv1.weight.data.sum(1, keepdim=True)
    net.conv1, net.fc = conv, nn.Identity()
    return net


def test_first_conv_adapted_to_other_channels_sees_a_grey_image_as_equal_colours():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 8, 8)
    colour = nn.Conv2d(3, 4, 3)
    grey = adapt_first_conv(nn.Sequential(copy.deepcopy(colour)), 1)[0]
    assert grey.in_channels == 1
    torch.testing.assert_close(grey(x), colour(x.repeat(1, 3, 1, 1)))
    one = nn.Conv2d(1, 4, 3)
    three = adapt_first_conv(nn.Sequential(copy.deepcopy(one)), 3)[0]
    torch.testing.assert_close(three(x.repeat(1, 3, 1, 1)), one(x))


def test_torchvision_resnet_with_its_weights_scores_glyphs_and_lakes_runs_beside_its_twin(data_root, tmp_path):
    torch.manual_seed(5)
    state = perturbed_statistics(torchvision.models.resnet18(), 5).state_dict()  # with its 1000-class fc
    torch.save(state, tmp_path / "W.pt")
    roots = f"{data_root}{os.pathsep}{fake_runs(fake_small(tmp_path / 'omniglot'))}"
    out = tmp_path / "resnet"
    evaluate.main(["--backbone", "torchvision:resnet18", "--weights", str(tmp_path / "W.pt"), "--in-channels", "1",
                   "--image-size", "28", "--datasets", "glyphs", "omniglot-lake", "--out", str(out),
                   "--data-root", roots, *TINY])
    records = jsonl(out / "results.jsonl")
    twin = "resnet (random init)"
    assert {(r["run"], r["dataset"], r["protocol"]) for r in records if r["metric"] == "accuracy"} == {
        (run, dataset, protocol) for run in ("resnet", twin)
        for dataset, protocol in (("glyphs", "fewshot"), ("omniglot-lake", "runs"))}
    assert all(r["axis"] in ("transferability", "overall") and r["train_data"] is None for r in records)
    # the same numbers from the Python call on the models built by hand: the twin is the factory's,
    # built after seeding with --seed (0)
    torch.manual_seed(0)
    twin_by_hand = grey_resnet18(None)
    expected = evaluate_backbone(grey_resnet18(state), ["glyphs", "omniglot-lake"], tmp_path / "by-hand",
                                 name="resnet", random_twin=twin_by_hand, image_size=28, suite="quick",
                                 data_root=roots, episodes=4, shots=[1], queries=3, classes=6)
    assert measures(records) == measures(expected)
    assert measures(records)["resnet", "glyphs", "evaluation", "fewshot", "proto", 5, 1, "accuracy"] != \
        measures(records)[twin, "glyphs", "evaluation", "fewshot", "proto", 5, 1, "accuracy"]
    # the report reads the folder like a run folder
    results, notes = load_results([out]), Notes()
    assert set(results["run"]) == {"resnet", twin}
    episodes = load_episodes(results, notes)
    assert {model for model, _ in episodes} == {"resnet", twin} and not notes


def test_a_factory_in_the_users_own_module(data_root, tmp_path):
    (tmp_path / "mymod.py").write_text(MYMOD)
    sys.path.insert(0, str(tmp_path))
    try:
        import mymod
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(3)
    trained = perturbed_statistics(mymod.make(), 3)
    torch.save({"state_dict": trained.state_dict(), "epoch": 7}, tmp_path / "w.pt")
    done = subprocess.run([sys.executable, "-m", "gessl.evaluate", "--backbone", "mymod:make", "--weights", "w.pt",
                           "--datasets", "glyphs", "mnist", "--out", "mine", "--data-root", str(data_root), *TINY],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    records = jsonl(tmp_path / "mine" / "results.jsonl")
    torch.manual_seed(0)
    expected = evaluate_backbone(trained, ["glyphs", "mnist"], tmp_path / "api" / "mine", random_twin=mymod.make(),
                                 suite="quick", data_root=data_root, episodes=4, shots=[1], queries=3, classes=6)
    assert measures(records) == measures(expected) and {r["run"] for r in records} == {"mine", "mine (random init)"}
    assert jsonl(tmp_path / "api" / "mine" / "results.jsonl") == expected  # the Python call returns what it wrote


WRONG_ARCHITECTURE = ("conv4.pt does not fit --backbone torchvision:resnet18 (missing conv1.weight, bn1.weight, "
                      "bn1.bias and 117 more; unexpected features.0.weight,")


def test_weights_of_the_wrong_architecture_are_one_line_exit_2_and_nothing_written(data_root, tmp_path):
    torch.save(Conv4().state_dict(), tmp_path / "conv4.pt")
    done = subprocess.run([sys.executable, "-m", "gessl.evaluate", "--backbone", "torchvision:resnet18", "--weights",
                           "conv4.pt", "--datasets", "glyphs", "--out", "out", "--data-root", str(data_root), *TINY],
                          cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and WRONG_ARCHITECTURE in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--backbone", "conv4", "--weights", "conv4.pt", "--in-channels", "3"],
     "misshapen features.0.weight [64, 1, 3, 3], not [64, 3, 3, 3]"),
    (["--backbone", "nosuchmodule:make"], "cannot import nosuchmodule"),
    (["--backbone", "torchvision:nosuchnet"], "unknown torchvision model 'nosuchnet'"),
    (["--backbone", "conv4", "--weights", "missing.pt"], "no weights file at missing.pt"),
    (["--backbone", "conv4", "--weights", "notes.pt"], "notes.pt holds no state dict"),
    (["--backbone", "conv4", "--datasets", "nosuchset"], "unknown dataset 'nosuchset'"),
])
def test_wrong_weights_or_names_are_a_user_error_before_anything_is_written(data_root, tmp_path, monkeypatch,
                                                                            args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # a MODULE:FACTORY is looked for in the folder too
    torch.save(Conv4().state_dict(), "conv4.pt")
    torch.save({"note": "not weights"}, "notes.pt")
    args = args if "--datasets" in args else [*args, "--datasets", "glyphs"]
    with pytest.raises(UserError) as error:
        evaluate.main([*args, "--out", "out", "--data-root", str(data_root), *TINY])
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_runs_backbone_file_scores_as_the_run_folder_does(trained_run, data_root, tmp_path):
    """``gessl.evaluate RUN`` and ``--backbone conv4 --weights RUN/backbone.pt --datasets`` on the run's
    targets: the same numbers, of the run's backbone and of its random twin, on the same episodes."""
    run = tmp_path / "a" / "run"
    shutil.copytree(trained_run, run)
    by_run = evaluate_run(run, "quick", seed=2, episodes=4, shots=[1, 5], queries=3, classes=6,
                          axes=["generalization", "transferability"])
    out = tmp_path / "b" / "run"
    evaluate.main(["--backbone", "conv4", "--weights", str(run / "backbone.pt"), "--datasets", "glyphs", "mnist",
                   "--out", str(out), "--seed", "2", "--data-root", str(data_root), *TINY[:-6], "--shots", "1", "5",
                   "--queries", "3", "--classes", "6"])
    by_backbone = jsonl(out / "results.jsonl")
    assert {(r["dataset"], r["split"]) for r in by_run if r["protocol"] == "fewshot"} == {
        ("glyphs", "evaluation"), ("mnist", "test")}
    assert measures(by_backbone) == measures(by_run)
    assert len(measures(by_run, ("fewshot",))) == 2 * 2 * 2  # two models, two sets, two shot settings


def test_a_backbone_without_convolutions_needs_its_channels(tmp_path):
    with pytest.raises(UserError, match="give them"):
        evaluate_backbone(nn.Flatten(), ["glyphs"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--out", "x"], "--out goes with --backbone"),
    (["some-run", "--backbone", "conv4", "--datasets", "glyphs"], "RUN_DIRs (or --compare) or --backbone, not both"),
    (["--backbone", "conv4"], "--backbone needs --datasets"),
])
def test_flags_that_do_not_go_together(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        evaluate.main(args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_the_default_twin_is_the_architecture_initialised_anew_from_the_seed():
    def make():
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    trained = perturbed_statistics(make(), 1)
    twin = reinitialised(trained, seed=9)
    torch.manual_seed(9)
    fresh = make()
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), fresh.state_dict().values()))
    assert not torch.equal(twin[1].running_mean, trained[1].running_mean)  # the copy, not the model, is reset
