"""The training configuration: the options every run shares (``TrainConfig``) and the base method's
own (its ``Options`` dataclass, ``baselines.options``), resolved as defaults ← YAML file ← CLI flags.

The resolved config is saved as ``config.yaml`` in the run folder, the base method's options under its
name (``simclr: {temperature: 0.1, ...}``); ``--resume`` reads it back and applies only the flags given
on the command line. Run folders saved with every option at the top level (the flat layout) read as
well: ``read_run_config`` is the one place that reads old run folders (``PREDATED``).

``--base`` names a method of the registry (``baselines.BASE_METHODS``) or ``MODULE:CLASS``, a method
defined in any importable module (docs/bases.md, "Adding a base method").
"""
import argparse
import dataclasses
import importlib
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from baselines import BASE_METHODS
from baselines.base import heads_alone_refusal
from baselines.options import (NoOptions, half_open_unit, non_negative, one_of, open_unit, option_types, positive,
                               problems, unit)
from gessl.shares import check_tasks
from tasks.common.errors import UserError
from tasks.common.io import read_text


MAX_SEED = 2 ** 32 - 1  # seeds are mixed with steps into generator seeds that must fit 64 bits


def seed_range(value):
    return None if 0 <= value <= MAX_SEED else f"must be in [0, {MAX_SEED}]"


# GeSSL's inner step α of each base method when --inner-lr is 0 (the default); the others take
# SimCLR's 0.001. One plain SGD step's move scales with the base loss, so a base whose loss moves
# its model further than SimCLR's gets the step of SimCLR's move, and none is raised (the evidence:
# docs/gessl.md, 'Why the defaults are what they are'; docs/results.md, 'GeSSL's inner step across
# base methods').
INNER_LR = {"simclr": 1e-3, "barlow": 8e-6}


@dataclass
class TrainConfig:
    """The options every run of ``python -m gessl.train`` shares, and ``base_options``, the base
    method's own (its ``Options``); a field's metadata holds its ``--help`` text and, for a number or a
    choice, its ``check`` (``baselines.options``)."""

    base: str = dataclasses.field(default="simclr", metadata={"help": "base SSL method: a name of the registry, or MODULE:CLASS (a method in your own module; docs/bases.md)"})
    reg: str = dataclasses.field(default="none", metadata={"help": "regulariser added to the base loss"})
    meta: str = dataclasses.field(default="gessl", metadata={"help": "meta-optimiser wrapping the base method: gessl or none"})
    dataset: str = dataclasses.field(default="glyphs", metadata={"help": "training data, its background split: glyphs, omniglot-small (Omniglot's minimal sets), ... (`python -m tasks.data list`)"})
    backbone: str = dataclasses.field(default="conv4", metadata={"help": "encoder architecture"})
    epochs: int = dataclasses.field(default=1, metadata={"help": "passes over the training data", "check": positive})
    max_steps: int = dataclasses.field(default=0, metadata={"help": "stop after this many steps (0: no limit)", "check": non_negative})
    batch_size: int = dataclasses.field(default=128, metadata={"help": "images per step (each gives two views); ignored by the episodic methods (protonet, maml, cactus), whose step is one episode of --episode-ways x (--episode-shots + --episode-queries) images", "check": positive})
    optimizer: str = dataclasses.field(default="adam", metadata={"help": "adam, or sgd (momentum 0.9, the SimSiam and MUSIC recipes)", "check": one_of("adam", "sgd")})
    lr: float = dataclasses.field(default=2e-3, metadata={"help": "peak learning rate", "check": positive})
    weight_decay: float = dataclasses.field(default=1e-6, metadata={"help": "weight decay (L2, added to the gradient)", "check": non_negative})
    warmup_steps: int = dataclasses.field(default=20, metadata={"help": "linear warm-up, then cosine decay", "check": non_negative})
    episode_ways: int = dataclasses.field(default=20, metadata={"help": "episodic methods (ProtoNet, MAML, CACTUs): classes per training episode (CACTUs: clusters of one partition; Snell et al. train Omniglot 60-way)", "check": positive})
    episode_shots: int = dataclasses.field(default=5, metadata={"help": "episodic methods: support images per class in a training episode", "check": positive})
    episode_queries: int = dataclasses.field(default=5, metadata={"help": "episodic methods: query images per class in a training episode", "check": positive})
    inner_steps: int = dataclasses.field(default=1, metadata={"help": "GeSSL: K, differentiable inner SGD steps per task", "check": non_negative})
    lookahead: int = dataclasses.field(default=1, metadata={"help": "GeSSL: lambda, further steps that build the self-motivated target", "check": non_negative})
    inner_lr: float = dataclasses.field(default=0.0, metadata={"help": "GeSSL: alpha, SGD step of the inner loop and the look-ahead; 0: the base method's (gessl.config.INNER_LR: 8e-6 for Barlow Twins, 0.001 for every other; docs/gessl.md)", "check": non_negative})
    support_ratio: float = dataclasses.field(default=0.5, metadata={"help": "GeSSL: share of a task's images in its support set", "check": open_unit})
    tasks_per_step: int = dataclasses.field(default=0, metadata={"help": "GeSSL: M, tasks the batch is cut into, contiguous, sizes differing by at most one (0: one per process: 1 alone, N under torchrun --nproc_per_node N)", "check": non_negative})
    gamma: float = dataclasses.field(default=1.0, metadata={"help": "GeSSL: weight of the base loss on the query after adaptation", "check": non_negative})
    sigma_weight: float = dataclasses.field(default=4.0, metadata={"help": "GeSSL: weight of the sigma-measurement in the outer loss", "check": non_negative})
    sigma_temperature: float = dataclasses.field(default=0.1, metadata={"help": "GeSSL: temperature of the posteriors sigma compares", "check": positive})
    first_order: bool = dataclasses.field(default=False, metadata={"help": "GeSSL: treat d(theta_K)/d(theta) as identity"})
    inner_params: str = dataclasses.field(default="auto", metadata={"help": "GeSSL: the parameters the inner loop, the look-ahead and sigma adapt: head (every trainable parameter outside the backbone, on backbone features computed once per task; ANIL's feature reuse, Raghu et al. 2020; the outer gradient still reaches the backbone), all, or auto: head, except all for a base method that cannot adapt its heads alone (moco, byol and psco run a momentum copy of the backbone on the images; protonet has no heads) [docs/gessl.md]", "check": one_of("auto", "all", "head")})
    outer_set: str = dataclasses.field(default="task", metadata={"help": "GeSSL: the images of a task that the outer loss and sigma are measured on: task (all of them: twice the negatives of a contrastive base) or query (the images the inner loop did not see); docs/gessl.md", "check": one_of("query", "task")})
    inner_backend: str = dataclasses.field(default="higher", metadata={"help": "GeSSL: inner-loop engine, higher or func", "check": one_of("higher", "func")})
    dsa_prior: str = dataclasses.field(default="ema", metadata={"help": "DSA: prior network: ema (an EMA copy of the encoder), pixels, imagenet-mobilenet, or a backbone.pt / run folder"})
    dsa_eta: int = dataclasses.field(default=20, metadata={"help": "DSA: eta, nearest neighbours of the outlier score", "check": positive})
    dsa_mu: int = dataclasses.field(default=1, metadata={"help": "DSA: mu, neighbour j of i counts when more than mu of j's neighbours have i as a neighbour", "check": non_negative})
    dsa_tau_p: float = dataclasses.field(default=0.5, metadata={"help": "DSA: tau_p, temperature of the prior relations", "check": positive})
    dsa_tau_w: float = dataclasses.field(default=0.5, metadata={"help": "DSA: tau_w, temperature of the DSA loss", "check": positive})
    dsa_lambda1: float = dataclasses.field(default=1.0, metadata={"help": "DSA: lambda_1, weight of the DSA loss", "check": non_negative})
    dsa_lambda2: float = dataclasses.field(default=0.01, metadata={"help": "DSA: lambda_2, weight of the prior alignment", "check": non_negative})
    dsa_ema: float = dataclasses.field(default=0.99, metadata={"help": "DSA: momentum of the EMA prior", "check": half_open_unit})
    aug_dilate: float = dataclasses.field(default=0.5, metadata={"help": "augmentation: probability of thickening a view's strokes (3x3 maximum filter); with --aug-gain the glyphs' counterpart of colour distortion (tasks/training/augment.py)", "check": unit})
    aug_gain: float = dataclasses.field(default=0.5, metadata={"help": "augmentation: a view's ink intensity scaled by U(1 - gain, 1) (0: off)", "check": half_open_unit})
    image_size: int = dataclasses.field(default=28, metadata={"help": "side of the (square) images", "check": positive})
    data_root: str = dataclasses.field(default="", metadata={"help": "data folder(s), several separated by ':' (generated sets are cached in the first; default: $GESSL_DATA or ~/.cache/gessl)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of initialisation, data order and augmentation", "check": seed_range})
    device: str = dataclasses.field(default="auto", metadata={"help": "auto, cpu or cuda", "check": one_of("auto", "cpu", "cuda")})
    amp: str = dataclasses.field(default="auto", metadata={"help": "mixed precision (torch.autocast) of the training step: bf16, fp16 (with a gradient scaler; --meta none only), off, or auto (bf16 on a CUDA GPU that supports it, else off)", "check": one_of("auto", "bf16", "fp16", "off")})
    channels_last: str = dataclasses.field(default="auto", metadata={"help": "channels-last memory layout of images and convolutions: on, off, or auto (on for CUDA)", "check": one_of("auto", "on", "off")})
    compile: bool = dataclasses.field(default=False, metadata={"help": "torch.compile the backbone (needs --meta none: compiled graphs have no double backward)"})
    sync_bn: bool = dataclasses.field(default=False, metadata={"help": "under several processes (torchrun), BatchNorm statistics over the whole batch instead of each process's share (plain step only)"})
    out: str = dataclasses.field(default="", metadata={"help": "run folder (default: runs/BASE[-REG][-META]-BACKBONE-seedSEED)"})
    log_every: int = dataclasses.field(default=10, metadata={"help": "steps between metrics.jsonl records", "check": positive})
    ckpt_every: int = dataclasses.field(default=100, metadata={"help": "steps between checkpoints", "check": positive})
    eval_episodes: int = dataclasses.field(default=600, metadata={"help": "episodes of the few-shot check after training (0: skip)", "check": non_negative})
    keep_backbones: bool = dataclasses.field(default=False, metadata={"help": "also keep the backbone of every checkpoint, as backbones/step-N.pt in the run folder (the points of a time-to-accuracy curve; docs/run_folders.md)"})
    base_options: object = dataclasses.field(default=None, metadata={"help": "the base method's own options, an instance of its Options dataclass (None: its defaults)"})

    def __post_init__(self):
        if self.inner_lr == 0:  # the base method's α
            self.inner_lr = INNER_LR.get(self.base, INNER_LR["simclr"])
        if self.base_options is None:
            self.base_options = options_class(method_class(self.base))()
        if self.inner_params == "auto":  # the heads alone where the base method can adapt them on backbone features
            self.inner_params = "all" if heads_alone_refusal(method_class(self.base)) else "head"

    @property
    def episode_size(self):
        """Images in one training episode of an episodic method: ways x (shots + queries)."""
        return self.episode_ways * (self.episode_shots + self.episode_queries)

    def value(self, name):
        """The value of option ``name``: a shared option's, else the base method's."""
        return getattr(self, name) if name in SHARED else getattr(self.base_options, name)

    def validate(self):
        """Raise ``UserError`` for values no run could use (names are checked by their registries)."""
        for name, problem in problems(self) + problems(self.base_options):
            raise UserError(f"{flag(name)} {problem}")
        if self.batch_size < 2:
            raise UserError("--batch-size must be at least 2: contrastive losses need other images")
        if self.meta == "gessl":  # alone; gessl.distributed.check_world checks a run of several processes
            check_tasks(self.batch_size, self.tasks_per_step or 1, self.support_ratio,
                        f"--batch-size {self.batch_size}")
        if self.amp == "fp16" and self.meta == "gessl":
            raise UserError("--amp fp16 needs --meta none: GeSSL's inner gradients are not loss-scaled and "
                            "underflow in fp16; use --amp bf16")
        if self.compile and self.meta == "gessl":
            raise UserError("--compile needs --meta none: GeSSL differentiates through its inner steps and "
                            "compiled graphs have no double backward")
        if self.sync_bn and self.meta == "gessl":
            raise UserError("--sync-bn needs --meta none: under GeSSL each process adapts to its own tasks, "
                            "normalised by their own statistics")
        return self

    def as_dict(self, omit=()):
        """The options as ``config.yaml`` holds them, without those in ``omit``: the shared ones, then the
        base method's as a mapping under its name."""
        shared = {k: v for k, v in dataclasses.asdict(self).items() if k not in omit and k != "base_options"}
        return {**shared, self.base: {k: v for k, v in dataclasses.asdict(self.base_options).items() if k not in omit}}

    def to_yaml(self, omit=()):
        """The config as YAML (``as_dict``)."""
        return yaml.safe_dump(self.as_dict(omit), sort_keys=False)


SHARED = {f.name for f in fields(TrainConfig)} - {"base_options"}


def flag(name):
    """The command-line flag of option ``name``."""
    return "--" + name.replace("_", "-")


def method_class(name):
    """The base method ``--base name`` names: a registry entry, or ``MODULE:CLASS`` imported (a
    ``UserError`` of one line when it cannot be)."""
    if name in BASE_METHODS:
        return BASE_METHODS[name]
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise UserError(f"unknown --base {name!r}; choose one of: {', '.join(BASE_METHODS)}, or MODULE:CLASS for a "
                        f"method in your own module")
    try:
        found = getattr(importlib.import_module(module), attr, None)
    except Exception as error:  # the user's module: any failure to import it is theirs to fix
        raise UserError(f"--base {name}: cannot import {module} ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}); is it on PYTHONPATH?") from None
    if not isinstance(found, type):
        raise UserError(f"--base {name}: module {module} has no class {attr}")
    return found


def options_class(method):
    """The dataclass of ``method``'s own options (``NoOptions`` for a method without)."""
    found = getattr(method, "Options", NoOptions)
    if not dataclasses.is_dataclass(found):
        raise UserError(f"{method.__name__}.Options is not a dataclass; declare it with @dataclasses.dataclass "
                        f"(docs/bases.md)")
    clash = sorted({f.name for f in fields(found)} & SHARED)
    if clash:
        raise UserError(f"{method.__name__}.Options repeats the shared options {clash}; give them other names")
    return found


def registered_options():
    """``{name: type}`` of the options of every method of the registry."""
    return {name: kind for method in BASE_METHODS.values()
            for name, kind in option_types(options_class(method)).items()}


# Options added after runs were saved without them, with the value those runs had: a run folder's
# config.yaml that lacks one is read with it (``read_run_config``), not with today's default.
PREDATED = {"aug_dilate": 0.0, "aug_gain": 0.0,  # the ink jitter came after the first runs,
            "simsiam_pred_lr": 0.0, "byol_pred_lr": 0.0, "byol_proj_bn": False,  # and so did the predictor rates, BYOL's BatchNorm
            "swav_temperature": lambda saved: saved.get("temperature", 0.1),  # SwAV shared --temperature
            "outer_set": "query",  # GeSSL's outer loss was on the query set alone
            "inner_params": "all"}  # and its inner loop adapted every parameter


def read_run_config(run_dir):
    """The resolved ``TrainConfig`` of a run folder's ``config.yaml``: the one place that reads the run
    folders of every layout. ``PREDATED`` fills the options it lacks (a value, or a function of the
    saved options), and a config.yaml of the flat layout (the base method's options at the top level,
    beside the shared ones) reads as one with them under the method's name (``resolve_config`` takes
    both)."""
    saved = read_yaml(Path(run_dir) / "config.yaml")
    base = saved.get("base", TrainConfig.base)
    flat = {**saved, **(saved.get(base) or {})}
    gaps = {name: value(flat) if callable(value) else value for name, value in PREDATED.items() if name not in flat}
    return resolve_config(gaps, saved)


# The options a --resume may change: how long, how often and where a run trains, not what it is.
RESUMABLE = {"epochs", "max_steps", "log_every", "ckpt_every", "eval_episodes", "keep_backbones", "device", "amp", "channels_last",
             "compile", "sync_bn", "data_root", "out"}

# The headings of the shared options in --help, in order: a shared option is under the first whose test it passes.
SHARED_HEADINGS = {"GeSSL (--meta gessl)": lambda f: f.metadata["help"].startswith("GeSSL:"),
                   "DSA (--reg dsa)": lambda f: f.name.startswith("dsa_"),
                   "episodic methods (protonet, maml, cactus)": lambda f: f.name.startswith("episode_"),
                   "options every run shares": lambda f: True}


def add_config_flags(parser, methods=None):
    """Add one flag per option, under headings: the shared options (``SHARED_HEADINGS``), then the
    options of each base method of ``methods`` ({name: class}; default: the registry) under ``--base
    NAME``. An option two methods share is listed under the first and named under the other's heading.
    Flags not given are left out of the namespace."""
    shown = [*list(SHARED_HEADINGS)[-1:], *list(SHARED_HEADINGS)[:-1]]  # the options every run shares first
    groups = {title: parser.add_argument_group(title) for title in shown}
    for f in fields(TrainConfig):
        if f.name in SHARED:
            title = next(title for title, test in SHARED_HEADINGS.items() if test(f))
            _add_flag(groups[title], f, f.type)
    seen = set()
    for name, method in (BASE_METHODS if methods is None else methods).items():
        own, types = fields(options_class(method)), option_types(options_class(method))
        also = [flag(f.name) for f in own if f.name in seen]
        about = f"also {', '.join(also)} (above)" if also else None if own else "no options of its own"
        group = parser.add_argument_group(f"--base {name}", about)
        for f in own:
            if f.name not in seen:
                _add_flag(group, f, types[f.name])
        seen |= {f.name for f in own}


def _add_flag(group, f, kind):
    """The flag of option field ``f`` of type ``kind``, with its help and default."""
    action = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind}
    default = "" if f.default is dataclasses.MISSING else f" (default: {f.default})"
    group.add_argument(flag(f.name), **action, default=argparse.SUPPRESS, help=f.metadata.get("help", "") + default)


def read_yaml(path):
    """Read a YAML config file into a layer of ``resolve_config``: known options (the shared ones, any
    registered method's, and those of a ``MODULE:CLASS`` base the file names) and base methods'
    sections of options; unknown keys and bad files are errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option: value")
    known = {**{f.name: f.type for f in fields(TrainConfig) if f.name in SHARED}, **registered_options()}
    if isinstance(data.get("base"), str) and data["base"] not in BASE_METHODS:
        known.update(option_types(options_class(method_class(data["base"]))))
    sections = {k for k, v in data.items() if isinstance(v, dict) and (k in BASE_METHODS or ":" in str(k))}
    unknown = sorted(map(str, set(data) - set(known) - sections))
    if unknown:
        raise UserError(f"config file {path} has unknown options {unknown}; see `python -m gessl.train --help`")
    try:
        return {k: _read_section(path, k, v) if k in sections else _convert(k, known[k], v) for k, v in data.items()}
    except (TypeError, ValueError) as exc:
        raise UserError(f"config file {path} has a value of the wrong type: {exc}") from None


def _read_section(path, base, section):
    """The options of method ``base`` in a config file's section, converted to their types."""
    types = option_types(options_class(method_class(base)))
    unknown = sorted(map(str, set(section) - set(types)))
    if unknown:
        raise UserError(f"config file {path} has unknown options {unknown} of --base {base}; its options: "
                        f"{', '.join(types) or 'none'}")
    return {k: _convert(k, types[k], v) for k, v in section.items()}


def _convert(name, kind, value):
    """``value`` as a ``kind``, refusing what would change on the way (4.7 or true for a count)."""
    if kind is bool and not isinstance(value, bool):
        raise TypeError(f"{name} expects true or false, got {value!r}")
    if kind is int and (isinstance(value, bool) or isinstance(value, float) and not value.is_integer()):
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    return kind(value)


def resolve_config(*layers):
    """Merge layers of options over the defaults, later layers winning, and validate. A layer maps
    option names to values (flags, a flat YAML file) and may hold a base method's options as a mapping
    under its name (``config.yaml``); of the methods' options only the base method's are kept."""
    shared = {k: v for layer in layers for k, v in layer.items() if k in SHARED}
    base = shared.get("base", TrainConfig.base)
    own_class = options_class(method_class(base))
    own_names = {f.name for f in fields(own_class)}
    known = SHARED | own_names | set(registered_options())
    unknown = sorted(k for layer in layers for k, v in layer.items() if k not in known and not isinstance(v, dict))
    if unknown:
        raise UserError(f"unknown options {unknown}; see `python -m gessl.train --help`")
    own = {}
    for layer in layers:
        own.update({k: v for k, v in layer.items() if k in own_names})
        section = layer.get(base) or {}
        if set(section) - own_names:
            raise UserError(f"unknown options {sorted(set(section) - own_names)} of --base {base}")
        own.update(section)
    try:
        options = own_class(**own)
    except TypeError as error:  # a user's Options field without a default, not given
        raise UserError(f"--base {base}: {error}; give the option a default or set it") from None
    return TrainConfig(**shared, base_options=options).validate()
