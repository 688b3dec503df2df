"""The training configuration: one dataclass, resolved as defaults ← YAML file ← CLI flags.

The resolved config is saved as ``config.yaml`` in the run folder; ``--resume`` reads it back and
applies only the flags given on the command line.
"""
import argparse
import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from gessl.shares import check_tasks
from tasks.errors import UserError


@dataclass
class TrainConfig:
    """Every option of ``python -m gessl.train``; the field's metadata holds its ``--help`` text."""

    base: str = dataclasses.field(default="simclr", metadata={"help": "base SSL method"})
    reg: str = dataclasses.field(default="none", metadata={"help": "regulariser added to the base loss"})
    meta: str = dataclasses.field(default="gessl", metadata={"help": "meta-optimiser wrapping the base method: gessl or none"})
    dataset: str = dataclasses.field(default="glyphs", metadata={"help": "training data, its background split: glyphs, omniglot-small (Omniglot's minimal sets), ... (`python -m tasks.data list`)"})
    backbone: str = dataclasses.field(default="conv4", metadata={"help": "encoder architecture"})
    epochs: int = dataclasses.field(default=1, metadata={"help": "passes over the training data"})
    max_steps: int = dataclasses.field(default=0, metadata={"help": "stop after this many steps (0: no limit)"})
    batch_size: int = dataclasses.field(default=128, metadata={"help": "images per step (each gives two views); ignored by the episodic methods (protonet, maml), whose step is one episode of --episode-ways x (--episode-shots + --episode-queries) images"})
    lr: float = dataclasses.field(default=2e-3, metadata={"help": "peak learning rate of Adam"})
    weight_decay: float = dataclasses.field(default=1e-6, metadata={"help": "Adam weight decay"})
    warmup_steps: int = dataclasses.field(default=20, metadata={"help": "linear warm-up, then cosine decay"})
    temperature: float = dataclasses.field(default=0.1, metadata={"help": "temperature of contrastive losses (SimCLR, SwAV, MoCo)"})
    proj_hidden: int = dataclasses.field(default=512, metadata={"help": "hidden width of the projector"})
    proj_dim: int = dataclasses.field(default=128, metadata={"help": "output width of the projector"})
    barlow_proj_dim: int = dataclasses.field(default=1024, metadata={"help": "Barlow Twins: width of both projector layers"})
    barlow_lambda: float = dataclasses.field(default=0.005, metadata={"help": "Barlow Twins: weight of the off-diagonal term"})
    vicreg_sim: float = dataclasses.field(default=25.0, metadata={"help": "VICReg: weight of the invariance term"})
    vicreg_var: float = dataclasses.field(default=25.0, metadata={"help": "VICReg: weight of the variance term"})
    vicreg_cov: float = dataclasses.field(default=1.0, metadata={"help": "VICReg: weight of the covariance term"})
    swav_prototypes: int = dataclasses.field(default=300, metadata={"help": "SwAV: number of prototypes K (3000 at CIFAR scale)"})
    swav_epsilon: float = dataclasses.field(default=0.05, metadata={"help": "SwAV: epsilon, entropy weight of the Sinkhorn codes"})
    swav_iters: int = dataclasses.field(default=3, metadata={"help": "SwAV: Sinkhorn-Knopp iterations"})
    swav_queue: int = dataclasses.field(default=0, metadata={"help": "SwAV: past projections per view (per process) added to the Sinkhorn problem once filled (0: no queue)"})
    music_hidden: int = dataclasses.field(default=1024, metadata={"help": "MUSIC: hidden width of the projector"})
    music_dim: int = dataclasses.field(default=2048, metadata={"help": "MUSIC: projector output width D = segments x segment size"})
    music_segment: int = dataclasses.field(default=32, metadata={"help": "MUSIC: B, attributes per segment (music_dim must hold at least two segments)"})
    music_ti: float = dataclasses.field(default=1.0, metadata={"help": "MUSIC: weight of the transform-invariance term"})
    music_dia: float = dataclasses.field(default=1.0, metadata={"help": "MUSIC: weight of the diagonal (same-segment) entropy term"})
    music_off: float = dataclasses.field(default=1.0, metadata={"help": "MUSIC: weight of the off-diagonal (cross-segment) entropy term"})
    moco_queue: int = dataclasses.field(default=4096, metadata={"help": "MoCo: K, keys held in the queue of negatives (65536 in the paper)"})
    moco_momentum: float = dataclasses.field(default=0.99, metadata={"help": "MoCo: m, momentum of the key encoder (0.999 in the paper)"})
    byol_momentum: float = dataclasses.field(default=0.999, metadata={"help": "BYOL: tau_base, target momentum at the start, raised to 1 by a cosine (0.996 in the paper)"})
    byol_pred_hidden: int = dataclasses.field(default=512, metadata={"help": "BYOL: hidden width of the predictor (4096 in the paper)"})
    simsiam_pred_hidden: int = dataclasses.field(default=128, metadata={"help": "SimSiam: hidden (bottleneck) width of the predictor (512 in the paper)"})
    supervised_scale: float = dataclasses.field(default=5.0, metadata={"help": "Supervised: scale s of the cosine classifier, logits s*cos(h, w_k) (0: a linear classifier W h + b, the CIFAR-scale choice)"})
    episode_ways: int = dataclasses.field(default=20, metadata={"help": "ProtoNet, MAML: classes per training episode (Snell et al. train Omniglot 60-way)"})
    episode_shots: int = dataclasses.field(default=5, metadata={"help": "ProtoNet, MAML: support images per class in a training episode"})
    episode_queries: int = dataclasses.field(default=5, metadata={"help": "ProtoNet, MAML: query images per class in a training episode"})
    maml_inner_steps: int = dataclasses.field(default=5, metadata={"help": "MAML: K, SGD steps adapting the head to an episode's support set (Finn et al.: 5 for 20-way Omniglot)"})
    maml_inner_lr: float = dataclasses.field(default=0.1, metadata={"help": "MAML: alpha, step of the head's adaptation (Finn et al.: 0.1 for 20-way Omniglot)"})
    maml_first_order: bool = dataclasses.field(default=False, metadata={"help": "MAML: first-order (FOMAML), d(w_K)/d(w) taken as identity"})
    inner_steps: int = dataclasses.field(default=1, metadata={"help": "GeSSL: K, differentiable inner SGD steps per task"})
    lookahead: int = dataclasses.field(default=1, metadata={"help": "GeSSL: lambda, further steps that build the self-motivated target"})
    inner_lr: float = dataclasses.field(default=0.01, metadata={"help": "GeSSL: alpha, SGD step of the inner loop and the look-ahead"})
    support_ratio: float = dataclasses.field(default=0.5, metadata={"help": "GeSSL: share of a task's images in its support set"})
    tasks_per_step: int = dataclasses.field(default=0, metadata={"help": "GeSSL: M, tasks the batch is cut into, contiguous, sizes differing by at most one (0: one per process: 1 alone, N under torchrun --nproc_per_node N)"})
    gamma: float = dataclasses.field(default=1.0, metadata={"help": "GeSSL: weight of the base loss on the query after adaptation"})
    sigma_weight: float = dataclasses.field(default=4.0, metadata={"help": "GeSSL: weight of the sigma-measurement in the outer loss"})
    sigma_temperature: float = dataclasses.field(default=0.1, metadata={"help": "GeSSL: temperature of the posteriors sigma compares"})
    first_order: bool = dataclasses.field(default=False, metadata={"help": "GeSSL: treat d(theta_K)/d(theta) as identity"})
    outer_set: str = dataclasses.field(default="query", metadata={"help": "GeSSL: the images of a task that the outer loss and sigma are measured on: query (the images the inner loop did not see) or task (all of them: twice the negatives of a contrastive base)"})
    inner_backend: str = dataclasses.field(default="higher", metadata={"help": "GeSSL: inner-loop engine, higher or func"})
    dsa_prior: str = dataclasses.field(default="ema", metadata={"help": "DSA: prior network: ema (an EMA copy of the encoder), pixels, imagenet-mobilenet, or a backbone.pt / run folder"})
    dsa_eta: int = dataclasses.field(default=20, metadata={"help": "DSA: eta, nearest neighbours of the outlier score"})
    dsa_mu: int = dataclasses.field(default=1, metadata={"help": "DSA: mu, neighbour j of i counts when more than mu of j's neighbours have i as a neighbour"})
    dsa_tau_p: float = dataclasses.field(default=0.5, metadata={"help": "DSA: tau_p, temperature of the prior relations"})
    dsa_tau_w: float = dataclasses.field(default=0.5, metadata={"help": "DSA: tau_w, temperature of the DSA loss"})
    dsa_lambda1: float = dataclasses.field(default=1.0, metadata={"help": "DSA: lambda_1, weight of the DSA loss"})
    dsa_lambda2: float = dataclasses.field(default=0.01, metadata={"help": "DSA: lambda_2, weight of the prior alignment"})
    dsa_ema: float = dataclasses.field(default=0.99, metadata={"help": "DSA: momentum of the EMA prior"})
    image_size: int = dataclasses.field(default=28, metadata={"help": "side of the (square) images"})
    data_root: str = dataclasses.field(default="", metadata={"help": "data folder(s), several separated by ':' (generated sets are cached in the first; default: $GESSL_DATA or ~/.cache/gessl)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of initialisation, data order and augmentation"})
    device: str = dataclasses.field(default="auto", metadata={"help": "auto, cpu or cuda"})
    amp: str = dataclasses.field(default="auto", metadata={"help": "mixed precision (torch.autocast) of the training step: bf16, fp16 (with a gradient scaler; --meta none only), off, or auto (bf16 on a CUDA GPU that supports it, else off)"})
    channels_last: str = dataclasses.field(default="auto", metadata={"help": "channels-last memory layout of images and convolutions: on, off, or auto (on for CUDA)"})
    compile: bool = dataclasses.field(default=False, metadata={"help": "torch.compile the backbone (needs --meta none: compiled graphs have no double backward)"})
    sync_bn: bool = dataclasses.field(default=False, metadata={"help": "under several processes (torchrun), BatchNorm statistics over the whole batch instead of each process's share (plain step only)"})
    out: str = dataclasses.field(default="", metadata={"help": "run folder (default: runs/BASE[-REG][-META]-BACKBONE-seedSEED)"})
    log_every: int = dataclasses.field(default=10, metadata={"help": "steps between metrics.jsonl records"})
    ckpt_every: int = dataclasses.field(default=100, metadata={"help": "steps between checkpoints"})
    eval_episodes: int = dataclasses.field(default=600, metadata={"help": "episodes of the few-shot check after training (0: skip)"})

    def validate(self):
        """Raise ``UserError`` for values no run could use (names are checked by their registries)."""
        for f in fields(self):
            if f.type is float and not math.isfinite(getattr(self, f.name)):
                raise UserError(f"--{f.name.replace('_', '-')} must be a finite number, got {getattr(self, f.name)}")
        positive = ["epochs", "batch_size", "lr", "temperature", "proj_hidden", "proj_dim", "image_size",
                    "log_every", "ckpt_every", "inner_lr", "sigma_temperature", "dsa_eta", "barlow_proj_dim",
                    "dsa_tau_p", "dsa_tau_w", "swav_prototypes", "swav_epsilon", "swav_iters", "music_hidden",
                    "music_dim", "music_segment", "moco_queue", "byol_pred_hidden", "simsiam_pred_hidden", "episode_ways",
                    "episode_shots", "episode_queries", "maml_inner_lr"]
        for name in positive:
            if not getattr(self, name) > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ["max_steps", "warmup_steps", "weight_decay", "eval_episodes", "inner_steps", "lookahead",
                     "gamma", "sigma_weight", "tasks_per_step", "dsa_mu", "dsa_lambda1", "dsa_lambda2", "barlow_lambda", "vicreg_sim",
                     "vicreg_var", "vicreg_cov", "swav_queue", "music_ti", "music_dia", "music_off", "maml_inner_steps",
                     "supervised_scale"]:
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be zero or positive, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise UserError("--batch-size must be at least 2: contrastive losses need other images")
        if not 0 < self.support_ratio < 1:
            raise UserError(f"--support-ratio must be between 0 and 1, got {self.support_ratio}")
        if self.meta == "gessl":  # alone; gessl.distributed.check_world checks a run of several processes
            check_tasks(self.batch_size, self.tasks_per_step or 1, self.support_ratio,
                        f"--batch-size {self.batch_size}")
        if self.base == "music" and (self.music_dim % self.music_segment or self.music_dim < 2 * self.music_segment):
            raise UserError(f"--music-dim {self.music_dim} must be a multiple of --music-segment "
                            f"{self.music_segment}, at least two segments")
        for name in ["dsa_ema", "moco_momentum", "byol_momentum"]:
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if self.outer_set not in ("query", "task"):
            raise UserError(f"--outer-set must be query or task, got {self.outer_set!r}")
        if self.inner_backend not in ("higher", "func"):
            raise UserError(f"--inner-backend must be higher or func, got {self.inner_backend!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise UserError(f"--amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if self.channels_last not in ("auto", "on", "off"):
            raise UserError(f"--channels-last must be auto, on or off, got {self.channels_last!r}")
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

    def to_yaml(self, omit=()):
        """The config as YAML, without the options in ``omit``."""
        return yaml.safe_dump({k: v for k, v in dataclasses.asdict(self).items() if k not in omit}, sort_keys=False)


# The options a --resume may change: how long, how often and where a run trains, not what it is.
RESUMABLE = {"epochs", "max_steps", "log_every", "ckpt_every", "eval_episodes", "device", "amp", "channels_last",
             "compile", "sync_bn", "data_root", "out"}


def add_config_flags(parser):
    """Add one flag per ``TrainConfig`` field; flags not given are left out of the namespace."""
    for f in fields(TrainConfig):
        kind = {"action": argparse.BooleanOptionalAction} if f.type is bool else {"type": f.type}
        parser.add_argument("--" + f.name.replace("_", "-"), **kind, default=argparse.SUPPRESS,
                            help=f"{f.metadata['help']} (default: {f.default})")


def read_yaml(path):
    """Read a YAML config file into a dict of known fields; unknown keys and bad files are errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option: value")
    known = {f.name: f.type for f in fields(TrainConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(f"config file {path} has unknown options {unknown}; see `python -m gessl.train --help`")
    try:
        return {k: _convert(k, known[k], v) for k, v in data.items()}
    except (TypeError, ValueError) as exc:
        raise UserError(f"config file {path} has a value of the wrong type: {exc}") from None


def _convert(name, kind, value):
    """``value`` as a ``kind``, refusing what would change on the way (4.7 or true for a count)."""
    if kind is bool and not isinstance(value, bool):
        raise TypeError(f"{name} expects true or false, got {value!r}")
    if kind is int and (isinstance(value, bool) or isinstance(value, float) and not value.is_integer()):
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    return kind(value)


def resolve_config(*layers):
    """Merge dicts of overrides over the defaults, later layers winning, and validate."""
    values = {}
    for layer in layers:
        values.update(layer)
    return TrainConfig(**values).validate()
