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
from tasks.common.errors import UserError
from tasks.common.io import read_text


# The bounds of the options, kept with their fields (metadata "check"): a check returns what is wrong
# with a value, or None. Names (base, reg, meta, dataset, backbone, dsa_prior) are checked by their
# registries when the run is built.
def positive(value):
    return None if value > 0 else "must be positive"


def non_negative(value):
    return None if value >= 0 else "must be zero or positive"


def unit(value):
    return None if 0 <= value <= 1 else "must be in [0, 1]"


def half_open_unit(value):
    return None if 0 <= value < 1 else "must be in [0, 1)"


def open_unit(value):
    return None if 0 < value < 1 else "must be between 0 and 1"


MAX_SEED = 2 ** 32 - 1  # seeds are mixed with steps into generator seeds that must fit 64 bits


def seed_range(value):
    return None if 0 <= value <= MAX_SEED else f"must be in [0, {MAX_SEED}]"


def at_least(low):
    def check(value):
        return None if value >= low else f"must be at least {low}"
    return check


def one_of(*choices):
    def check(value):
        return None if value in choices else f"must be {', '.join(choices[:-1])} or {choices[-1]}"
    return check


# GeSSL's inner step α of each base method when --inner-lr is 0 (the default); the others take
# SimCLR's 0.001. One plain SGD step's move scales with the base loss: at 0.001 Barlow Twins' model
# moves 123 times as far as SimCLR's (benchmarks/inner_step_scale.py), and inside GeSSL it lost
# 10-14 points to Barlow Twins alone, level with it at 8e-6, the step of SimCLR's move
# (benchmarks/grids/inner_step.yaml, three seeds). A larger step for a base that moves less did not
# help: BYOL at its matched 5e-3 was below BYOL at 0.001 on every seed on Lake's runs, the glyphs
# and KanjiVG (4.6-5.9 points, three seeds). So no base's step moves its model further than
# SimCLR's does, and none is raised.
INNER_LR = {"simclr": 1e-3, "barlow": 8e-6}


@dataclass
class TrainConfig:
    """Every option of ``python -m gessl.train``; the field's metadata holds its ``--help`` text and,
    for a number or a choice, its ``check``."""

    base: str = dataclasses.field(default="simclr", metadata={"help": "base SSL method"})
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
    temperature: float = dataclasses.field(default=0.1, metadata={"help": "temperature of contrastive losses (SimCLR, MoCo, PsCo's MoCo term)", "check": positive})
    proj_hidden: int = dataclasses.field(default=512, metadata={"help": "hidden width of the projector", "check": positive})
    proj_dim: int = dataclasses.field(default=128, metadata={"help": "output width of the projector", "check": positive})
    barlow_proj_dim: int = dataclasses.field(default=1024, metadata={"help": "Barlow Twins: width of both projector layers", "check": positive})
    barlow_lambda: float = dataclasses.field(default=0.005, metadata={"help": "Barlow Twins: weight of the off-diagonal term", "check": non_negative})
    vicreg_sim: float = dataclasses.field(default=25.0, metadata={"help": "VICReg: weight of the invariance term", "check": non_negative})
    vicreg_var: float = dataclasses.field(default=25.0, metadata={"help": "VICReg: weight of the variance term", "check": non_negative})
    vicreg_cov: float = dataclasses.field(default=1.0, metadata={"help": "VICReg: weight of the covariance term", "check": non_negative})
    swav_temperature: float = dataclasses.field(default=0.2, metadata={"help": "SwAV: temperature tau of the prototype softmax (0.1 in the paper)", "check": positive})
    swav_prototypes: int = dataclasses.field(default=300, metadata={"help": "SwAV: number of prototypes K (3000 at CIFAR scale)", "check": positive})
    swav_epsilon: float = dataclasses.field(default=0.03, metadata={"help": "SwAV: epsilon, entropy weight of the Sinkhorn codes (0.05 in the paper)", "check": positive})
    swav_iters: int = dataclasses.field(default=3, metadata={"help": "SwAV: Sinkhorn-Knopp iterations", "check": positive})
    swav_queue: int = dataclasses.field(default=0, metadata={"help": "SwAV: past projections per view (per process) added to the Sinkhorn problem once filled (0: no queue)", "check": non_negative})
    music_hidden: int = dataclasses.field(default=1024, metadata={"help": "MUSIC: hidden width of the projector", "check": positive})
    music_dim: int = dataclasses.field(default=2048, metadata={"help": "MUSIC: projector output width D = segments x segment size", "check": positive})
    music_segment: int = dataclasses.field(default=32, metadata={"help": "MUSIC: B, attributes per segment (music_dim must hold at least two segments)", "check": positive})
    music_ti: float = dataclasses.field(default=0.2, metadata={"help": "MUSIC: weight of the transform-invariance term (the spec's 1 learns a third less on Omniglot in short runs; docs/bases.md)", "check": non_negative})
    music_dia: float = dataclasses.field(default=1.0, metadata={"help": "MUSIC: weight of the diagonal (same-segment) entropy term", "check": non_negative})
    music_off: float = dataclasses.field(default=1.0, metadata={"help": "MUSIC: weight of the off-diagonal (cross-segment) entropy term", "check": non_negative})
    moco_queue: int = dataclasses.field(default=4096, metadata={"help": "MoCo, PsCo: keys held in the queue (MoCo's negatives, 65536 in its paper; PsCo's shots and negatives, one key per image, 16384 in its paper)", "check": positive})
    moco_momentum: float = dataclasses.field(default=0.99, metadata={"help": "MoCo, PsCo: m, momentum of the key encoder (0.999 in MoCo's paper, 0.99 in PsCo's)", "check": half_open_unit})
    psco_shots: int = dataclasses.field(default=1, metadata={"help": "PsCo: K, shots per image taken from the queue (the top K of its Sinkhorn assignment; Jang et al.: 1 on Omniglot, 4 on miniImageNet)", "check": positive})
    psco_temperature: float = dataclasses.field(default=1.0, metadata={"help": "PsCo: temperature of the pseudo-task contrastive loss (1 in the paper; --temperature is its MoCo term's)", "check": positive})
    psco_epsilon: float = dataclasses.field(default=0.05, metadata={"help": "PsCo: epsilon, entropy weight of the Sinkhorn assignment of keys to the queue (0.05 in the paper)", "check": positive})
    byol_momentum: float = dataclasses.field(default=0.99, metadata={"help": "BYOL: tau_base, target momentum at the start, raised to 1 by a cosine (0.996 in the paper)", "check": half_open_unit})
    byol_pred_hidden: int = dataclasses.field(default=128, metadata={"help": "BYOL: hidden width of the predictor (4096 in the paper)", "check": positive})
    byol_proj_bn: bool = dataclasses.field(default=True, metadata={"help": "BYOL: BatchNorm on the projector's output (SimSiam's projector; the paper has none)"})
    byol_pred_lr: float = dataclasses.field(default=10.0, metadata={"help": "BYOL: the predictor's learning rate, a multiple of --lr held constant (no warm-up or decay); 0: the schedule's, like every other parameter (the paper)", "check": non_negative})
    simsiam_pred_hidden: int = dataclasses.field(default=128, metadata={"help": "SimSiam: hidden (bottleneck) width of the predictor (512 in the paper)", "check": positive})
    simsiam_pred_lr: float = dataclasses.field(default=10.0, metadata={"help": "SimSiam: the predictor's learning rate, a multiple of --lr held constant (no warm-up or decay; the paper holds it at 1x); 0: the schedule's, like every other parameter", "check": non_negative})
    supervised_scale: float = dataclasses.field(default=5.0, metadata={"help": "Supervised: scale s of the cosine classifier, logits s*cos(h, w_k) (0: a linear classifier W h + b, the CIFAR-scale choice)", "check": non_negative})
    episode_ways: int = dataclasses.field(default=20, metadata={"help": "ProtoNet, MAML, CACTUs: classes per training episode (CACTUs: clusters of one partition; Snell et al. train Omniglot 60-way)", "check": positive})
    episode_shots: int = dataclasses.field(default=5, metadata={"help": "ProtoNet, MAML, CACTUs: support images per class in a training episode", "check": positive})
    episode_queries: int = dataclasses.field(default=5, metadata={"help": "ProtoNet, MAML, CACTUs: query images per class in a training episode", "check": positive})
    maml_inner_steps: int = dataclasses.field(default=5, metadata={"help": "MAML (and UMTRA --umtra-learner maml): K, SGD steps adapting the head to an episode's support set (Finn et al.: 5 for 20-way Omniglot)", "check": non_negative})
    maml_inner_lr: float = dataclasses.field(default=0.1, metadata={"help": "MAML (and UMTRA --umtra-learner maml): alpha, step of the head's adaptation (Finn et al.: 0.1 for 20-way Omniglot)", "check": positive})
    maml_first_order: bool = dataclasses.field(default=False, metadata={"help": "MAML (and UMTRA --umtra-learner maml): first-order (FOMAML), d(w_K)/d(w) taken as identity"})
    umtra_ways: int = dataclasses.field(default=5, metadata={"help": "UMTRA: N, unlabelled images (classes) per task; a batch gives ceil(batch / N) tasks (Khodadadeh et al.: 5 on Omniglot)", "check": at_least(2)})
    umtra_learner: str = dataclasses.field(default="maml", metadata={"help": "UMTRA: the meta-learner on each task, maml (a linear head adapted with the --maml-* options, the paper's) or proto (ProtoNet's loss)", "check": one_of("maml", "proto")})
    cactus_learner: str = dataclasses.field(default="proto", metadata={"help": "CACTUs: the meta-learner on each cluster task, proto (ProtoNet's loss) or maml (MAML's head adapted with the --maml-* options); tasks are --episode-ways x (--episode-shots + --episode-queries) images", "check": one_of("proto", "maml")})
    cactus_encoder: str = dataclasses.field(default="random", metadata={"help": "CACTUs: the frozen encoder whose embeddings are clustered: random (the run's backbone at its seeded initialisation) or a run folder (its backbone.pt) or backbone file"})
    cactus_partitions: int = dataclasses.field(default=20, metadata={"help": "CACTUs: P, k-means partitions of the embeddings, all but the first on randomly rescaled dimensions (Hsu et al.: 100 on Omniglot)", "check": positive})
    cactus_clusters: int = dataclasses.field(default=500, metadata={"help": "CACTUs: k, clusters per partition; those with fewer than shots + queries images are dropped (Hsu et al.: 500 on Omniglot)", "check": at_least(2)})
    inner_steps: int = dataclasses.field(default=1, metadata={"help": "GeSSL: K, differentiable inner SGD steps per task", "check": non_negative})
    lookahead: int = dataclasses.field(default=1, metadata={"help": "GeSSL: lambda, further steps that build the self-motivated target", "check": non_negative})
    inner_lr: float = dataclasses.field(default=0.0, metadata={"help": "GeSSL: alpha, SGD step of the inner loop and the look-ahead; 0: the base method's (gessl.config.INNER_LR: 8e-6 for Barlow Twins, whose loss makes a step of 0.001 move its model 123 times as far as SimCLR's; benchmarks/grids/inner_step.yaml), 0.001 for every other (0.01 until December 2026; benchmarks/grids/defaults.yaml)", "check": non_negative})
    support_ratio: float = dataclasses.field(default=0.5, metadata={"help": "GeSSL: share of a task's images in its support set", "check": open_unit})
    tasks_per_step: int = dataclasses.field(default=0, metadata={"help": "GeSSL: M, tasks the batch is cut into, contiguous, sizes differing by at most one (0: one per process: 1 alone, N under torchrun --nproc_per_node N)", "check": non_negative})
    gamma: float = dataclasses.field(default=1.0, metadata={"help": "GeSSL: weight of the base loss on the query after adaptation", "check": non_negative})
    sigma_weight: float = dataclasses.field(default=4.0, metadata={"help": "GeSSL: weight of the sigma-measurement in the outer loss", "check": non_negative})
    sigma_temperature: float = dataclasses.field(default=0.1, metadata={"help": "GeSSL: temperature of the posteriors sigma compares", "check": positive})
    first_order: bool = dataclasses.field(default=False, metadata={"help": "GeSSL: treat d(theta_K)/d(theta) as identity"})
    inner_params: str = dataclasses.field(default="all", metadata={"help": "GeSSL: the parameters the inner loop, the look-ahead and sigma adapt: all, or head (every trainable parameter outside the backbone, on backbone features computed once per task; ANIL's feature reuse, Raghu et al. 2020; the outer gradient still reaches the backbone) [choice; docs/gessl.md]", "check": one_of("all", "head")})
    outer_set: str = dataclasses.field(default="task", metadata={"help": "GeSSL: the images of a task that the outer loss and sigma are measured on: task (all of them: twice the negatives of a contrastive base; the default since December 2026, benchmarks/grids/defaults.yaml) or query (the images the inner loop did not see)", "check": one_of("query", "task")})
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

    def __post_init__(self):
        if self.inner_lr == 0:  # the base method's α
            self.inner_lr = INNER_LR.get(self.base, INNER_LR["simclr"])

    @property
    def episode_size(self):
        """Images in one training episode of an episodic method: ways x (shots + queries)."""
        return self.episode_ways * (self.episode_shots + self.episode_queries)

    def validate(self):
        """Raise ``UserError`` for values no run could use (names are checked by their registries)."""
        for f in fields(self):
            value, flag = getattr(self, f.name), "--" + f.name.replace("_", "-")
            if f.type is float and not math.isfinite(value):
                raise UserError(f"{flag} must be a finite number, got {value}")
            problem = f.metadata["check"](value) if "check" in f.metadata else None
            if problem:
                raise UserError(f"{flag} {problem}, got {value if f.type in (int, float) else repr(value)}")
        if self.batch_size < 2:
            raise UserError("--batch-size must be at least 2: contrastive losses need other images")
        if self.meta == "gessl":  # alone; gessl.distributed.check_world checks a run of several processes
            check_tasks(self.batch_size, self.tasks_per_step or 1, self.support_ratio,
                        f"--batch-size {self.batch_size}")
        if self.base == "music" and (self.music_dim % self.music_segment or self.music_dim < 2 * self.music_segment):
            raise UserError(f"--music-dim {self.music_dim} must be a multiple of --music-segment "
                            f"{self.music_segment}, at least two segments")
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


# Options added after runs were saved without them, with the value those runs had: a run folder's
# config.yaml that lacks one is read with it (``read_run_config``), not with today's default.
PREDATED = {"aug_dilate": 0.0, "aug_gain": 0.0,  # the ink jitter came after the first runs,
            "simsiam_pred_lr": 0.0, "byol_pred_lr": 0.0, "byol_proj_bn": False,  # and so did the predictor rates, BYOL's BatchNorm
            "swav_temperature": lambda saved: saved.get("temperature", 0.1),  # SwAV shared --temperature
            "outer_set": "query"}  # GeSSL's outer loss was on the query set alone


def read_run_config(run_dir):
    """The resolved ``TrainConfig`` of a run folder's ``config.yaml`` (``PREDATED`` filling its gaps:
    a value, or a function of the saved options)."""
    saved = read_yaml(Path(run_dir) / "config.yaml")
    gaps = {name: value(saved) if callable(value) else value for name, value in PREDATED.items() if name not in saved}
    return resolve_config(gaps, saved)


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
        data = yaml.safe_load(read_text(path)) or {}
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
