import dataclasses
import inspect
import json
import lzma
import re

import pytest
import yaml

from baselines import BASE_METHODS
from gessl.config import TrainConfig, read_run_config, read_yaml, resolve_config
from gessl.train import parse_args, prepare_run
from tasks.common.errors import UserError
from tests.helpers import REPO


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 0.01\nbatch_size: 64\n")
    cfg, run_dir, resume, _ = prepare_run(parse_args(["--config", str(cfg_file), "--batch-size", "32",
                                                   "--out", str(tmp_path / "run")]))
    assert (cfg.lr, cfg.batch_size, cfg.epochs) == (0.01, 32, TrainConfig().epochs)
    assert run_dir == tmp_path / "run" and not resume


def test_saved_config_round_trips(tmp_path):
    cfg = resolve_config({"lr": 0.5, "base": "simclr", "max_steps": 7})
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    assert resolve_config(read_yaml(tmp_path / "config.yaml")) == cfg


@pytest.mark.parametrize("flags, message", [
    (["--lr", "0"], "--lr must be positive"),
    (["--batch-size", "-3"], "--batch-size must be positive"),
    (["--base", "nope"], "unknown --base 'nope'"),
    (["--backbone", "vgg"], "unknown --backbone 'vgg'"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    (["--meta", "maml"], "unknown --meta 'maml'"),
    (["--support-ratio", "1.5"], "--support-ratio must be between 0 and 1"),
    (["--inner-backend", "jax"], "--inner-backend must be higher or func"),
    (["--outer-set", "all"], "--outer-set must be query or task"),
    (["--batch-size", "8", "--tasks-per-step", "4"], "fewer than 2 images in a support or query set"),
    (["--inner-lr", "-0.001"], "--inner-lr must be zero or positive"),
])
def test_bad_values_are_user_errors(tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        prepare_run(parse_args(flags + ["--out", str(tmp_path / "run")]))
    assert not (tmp_path / "run").exists()


def test_yaml_with_unknown_key_or_bad_type_is_rejected(tmp_path):
    (tmp_path / "a.yaml").write_text("learning_rate: 0.1\n")
    (tmp_path / "b.yaml").write_text("epochs: many\n")
    with pytest.raises(UserError, match="unknown options"):
        read_yaml(tmp_path / "a.yaml")
    with pytest.raises(UserError, match="wrong type"):
        read_yaml(tmp_path / "b.yaml")


def test_boolean_flags_and_yaml_booleans(tmp_path):
    assert prepare_run(parse_args(["--first-order", "--out", str(tmp_path / "a")]))[0].first_order is True
    assert prepare_run(parse_args(["--no-first-order", "--out", str(tmp_path / "b")]))[0].first_order is False
    (tmp_path / "c.yaml").write_text("first_order: maybe\n")
    with pytest.raises(UserError, match="wrong type"):
        read_yaml(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("first_order: true\n")
    assert read_yaml(tmp_path / "d.yaml") == {"first_order": True}


def test_every_number_and_choice_carries_its_bounds():
    # A new option without a "check" would be accepted at any value: bounds live with the fields.
    names = {"base", "reg", "meta", "dataset", "backbone", "dsa_prior", "cactus_encoder"}  # checked by their registries (CACTUs.check_config)
    free = {"data_root", "out"}  # any path
    every = [*dataclasses.fields(TrainConfig),
             *(f for method in BASE_METHODS.values() for f in dataclasses.fields(method.Options))]
    for f in every:
        if f.type in (int, float) or (f.type is str and f.name not in names | free):
            assert callable(f.metadata.get("check")), f.name
            assert f.metadata["check"](f.default) is None, f.name  # the default passes its own check


def test_train_config_holds_only_the_shared_options_and_each_method_its_own():
    shared = {f.name for f in dataclasses.fields(TrainConfig)}
    for name, method in BASE_METHODS.items():
        own = {f.name for f in dataclasses.fields(method.Options)}
        assert not own & shared, name
        cfg = resolve_config({"base": name})
        assert isinstance(cfg.base_options, method.Options) and cfg.base_options == method.Options()
    assert not {"temperature", "proj_dim", "swav_temperature", "maml_inner_lr", "cactus_clusters"} & shared


def test_each_constructor_default_is_the_default_of_the_option_it_names():
    """A method built in Python without a keyword trains like gessl.train without the flag."""
    shared = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name, method in BASE_METHODS.items():
        options = {**shared, **{f.name: f.default for f in dataclasses.fields(method.Options)}}
        keywords = {k: p.default for k, p in inspect.signature(method).parameters.items()
                    if p.default is not inspect.Parameter.empty and k in options}
        assert keywords == {k: options[k] for k in keywords}, name
        assert set(keywords) >= {f.name for f in dataclasses.fields(method.Options)}, name


def help_text(*flags, capsys):
    with pytest.raises(SystemExit):
        parse_args([*flags, "--help"])
    return capsys.readouterr().out.split("\noptions:", 1)[1]  # after the usage line, which names every flag


def test_help_lists_each_methods_options_under_its_own_heading(capsys):
    every = help_text(capsys=capsys)
    headings = [line[:-1] for line in every.splitlines() if line.startswith("--base ") and line.endswith(":")]
    assert headings == [f"--base {name}" for name in BASE_METHODS]
    swav_part = every.split("--base swav:")[1].split("--base music:")[0]
    assert "--swav-temperature" in swav_part and "also --proj-hidden, --proj-dim (above)" in swav_part
    assert "--swav-temperature" not in every.split("--base swav:")[0]
    swav = help_text("--base", "swav", capsys=capsys)
    assert "--base swav:" in swav and "--proj-hidden" in swav and "--swav-epsilon" in swav
    assert "--base simclr:" not in swav and "--music-dim" not in swav and "--inner-steps" in swav  # and the shared


def test_a_config_file_may_hold_the_methods_options_under_its_name(tmp_path):
    (tmp_path / "c.yaml").write_text("base: swav\nlr: 0.01\nswav:\n  swav_prototypes: 40\n  proj_dim: 32\n")
    cfg, *_ = prepare_run(parse_args(["--config", str(tmp_path / "c.yaml"), "--proj-dim", "16",
                                      "--out", str(tmp_path / "run")]))
    assert (cfg.lr, cfg.base_options.swav_prototypes, cfg.base_options.proj_dim) == (0.01, 40, 16)  # the flag wins
    assert yaml.safe_load(cfg.to_yaml())["swav"]["swav_prototypes"] == 40
    (tmp_path / "d.yaml").write_text("swav:\n  swav_prototype: 40\n")
    with pytest.raises(UserError, match=r"unknown options \['swav_prototype'\] of --base swav"):
        read_yaml(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("swav:\n  swav_prototypes: many\n")
    with pytest.raises(UserError, match="wrong type"):
        read_yaml(tmp_path / "e.yaml")


@pytest.mark.parametrize("flags, message", [
    (["--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
    (["--seed", str(2 ** 63)], f"--seed must be in [0, 4294967295], got {2 ** 63}"),
    (["--lookahead", "-2"], "--lookahead must be zero or positive, got -2"),
])
def test_bounds_name_the_flag_and_the_value(tmp_path, flags, message):
    with pytest.raises(UserError, match=re.escape(message)):
        prepare_run(parse_args(flags + ["--out", str(tmp_path / "run")]))


def committed_study_configs(tmp_path):
    """A run folder holding only ``config.yaml`` for every cell kept in ``benchmarks/results/*/evaluations.jsonl.xz``."""
    for store in sorted((REPO / "benchmarks" / "results").glob("*/evaluations.jsonl.xz")):
        for line in lzma.decompress(store.read_bytes()).decode().splitlines():
            kept = json.loads(line)
            folder = tmp_path / store.parent.name / kept["cell"]
            folder.mkdir(parents=True)
            (folder / "config.yaml").write_text(kept["config"])
            yield folder


def test_the_committed_study_configs_still_read(tmp_path):
    folders = list(committed_study_configs(tmp_path))
    assert len(folders) > 200
    for folder in folders:
        cfg = read_run_config(folder)
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        own = {f.name for f in dataclasses.fields(cfg.base_options)}
        assert {k: v for k, v in saved.items() if k in own} == {k: cfg.value(k) for k in own if k in saved}, folder
        if saved.get("meta", "gessl") == "gessl":  # GeSSL adapted every parameter before --inner-params existed
            assert cfg.inner_params == saved.get("inner_params", "all"), folder


@pytest.mark.parametrize("base, chosen", [("simclr", "head"), ("barlow", "head"), ("swav", "head"), ("moco", "all"),
                                          ("byol", "all"), ("psco", "all"), ("protonet", "all")])
def test_inner_params_auto_is_head_where_the_base_method_can_adapt_its_heads_alone(base, chosen, tmp_path):
    assert resolve_config({"base": base}).inner_params == chosen
    assert resolve_config({"base": base, "inner_params": "all"}).inner_params == "all"
    saved = tmp_path / "config.yaml"
    saved.write_text(resolve_config({"base": base}).to_yaml())
    assert yaml.safe_load(saved.read_text())["inner_params"] == chosen  # the run records what auto chose
