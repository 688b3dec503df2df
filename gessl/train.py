"""Train a self-supervised backbone: ``python -m gessl.train --base simclr``.

The run folder (``--out``, claimed by ``gessl.run_folder``) holds ``config.yaml`` (the resolved
config, the options that act), ``data.json`` (``data_record``: what it trains on), ``metrics.jsonl``
(one record per logged step), ``checkpoint.pt`` (the latest state, written atomically),
``backbone.pt`` (the encoder alone) and, after the closing few-shot check, ``results.jsonl``.

Every random choice of a step (batch order, augmentation, the episode of an episodic method) is
drawn from generators seeded by ``(seed, epoch)`` and ``(seed, step)``, so ``--resume`` after a stop
ends with the same weights as a run that never stopped (on CPU, where kernels are deterministic).

``torchrun --nproc_per_node N -m gessl.train ...`` trains on N processes (``gessl.distributed``
says how they share the work); ``--amp``, ``--channels-last`` and ``--compile`` choose how a step
uses a GPU (``gessl.device``).
"""
import argparse
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from baselines import BASE_METHODS
from gessl.backbones import (BACKBONES, build_backbone, load_backbone, load_torch_file, not_finite, save_backbone,
                             save_torch_file)
from gessl.bilevel import META_OPTIMISERS
from gessl.collapse import THRESHOLDS, collapsing
from gessl.config import (RESUMABLE, SHARED, add_config_flags, method_class, read_run_config, read_yaml,
                          registered_options, resolve_config)
from gessl.device import Placement, resolve_device
from gessl.distributed import Processes, check_world
from gessl.dsa import DSA, check_prior
from gessl.evaluate import evaluate_run, print_table
from gessl.run_folder import claimed
from gessl.shares import check_tasks
from gessl.sync_bn import convert_sync_batchnorm
from tasks.common.errors import UserError, run_cli
from tasks.common.interrupts import DeferredStop
from tasks.common.io import WriteError, append_jsonl, atomic_write_text, read_jsonl
from tasks.data.fonts import font_files, font_list
from tasks.data.roots import data_root
from tasks.data.registry import get_dataset, load_split, noto_dir
from tasks.evaluation.fewshot import embed
from tasks.training.augment import GlyphAugment
from tasks.training.episodes import EpisodeSampler

EPISODE_OPTIONS = ("episode_ways", "episode_shots", "episode_queries")  # an episodic method's EpisodeSampler
DATA_FILE = "data.json"  # the run folder's record of its training data (``data_record``)
GLYPH_FONTS = {"glyphs": lambda root: font_files(), "glyphs-noto": lambda root: font_files([noto_dir(data_root(root))])}
REGULARISERS = {"none": None, "dsa": DSA.from_config}  # name -> from_config(cfg, encoder, in_channels, proj_dim)
CHECKPOINT_FORMAT = "gessl-checkpoint/1"
CLOSING_CHECK = {"axes": ("generalization",), "sigma_shots": (), "per_class": None}  # the quick suite, few-shot only


class SSLModel(nn.Module):
    """A backbone, a base method's heads and an optional regulariser.

    ``forward(batch)`` returns the method's ``SSLOutput``, with the regulariser's terms added when
    there is one; ``prepare_batch(batch)`` adds what the regulariser computes once per optimiser
    step, before the objective cuts the batch into tasks; ``after_step(progress)`` runs, once per
    optimiser step, the ``after_step(backbone, progress)`` hooks of the method and the regulariser
    (momentum encoders, EMA priors); ``progress`` ∈ [0, 1] is the share of training done.
    """

    def __init__(self, backbone, method, regulariser=None):
        super().__init__()
        self.backbone = backbone
        self.method = method
        self.regulariser = regulariser

    def forward(self, batch):
        out = self.method(self.backbone, batch)
        return out if self.regulariser is None else self.regulariser(out, batch)

    def prepare_batch(self, batch):
        """``batch`` with what the regulariser computes once per optimiser step (DSA: prior features)."""
        return batch if self.regulariser is None else self.regulariser.prepare_batch(batch)

    def after_step(self, progress):
        for part in (self.method, self.regulariser):
            if hasattr(part, "after_step"):
                part.after_step(self.backbone, progress)


def pick(registry, name, flag):
    """Look ``name`` up in ``registry``; an unknown name is a ``UserError`` listing the choices."""
    if name not in registry:
        raise UserError(f"unknown {flag} {name!r}; choose one of: {', '.join(registry)}")
    return registry[name]


def check_names(cfg):
    """Fail early, before anything is written, on names no registry knows."""
    method_class(cfg.base)
    pick(REGULARISERS, cfg.reg, "--reg")
    if cfg.reg == "dsa":
        check_prior(cfg.dsa_prior)
    pick(META_OPTIMISERS, cfg.meta, "--meta")
    pick(BACKBONES, cfg.backbone, "--backbone")
    get_dataset(cfg.dataset, cfg.data_root)
    check_episodic(cfg)


def check_episodic(cfg):
    """Fail early on what a meta-learning or label-using method cannot run in: a meta-learner (MAML,
    UMTRA) inside GeSSL (nested meta-learning), a batch UMTRA cannot cut into tasks, or GeSSL support
    or query sets holding a single image of a class (an episode laid out round by round has every
    class once in any ``episode_ways`` images)."""
    method_cls = method_class(cfg.base)
    try:
        getattr(method_cls, "check_config", lambda cfg: None)(cfg)  # a method's own up-front check
        getattr(META_OPTIMISERS[cfg.meta], "check_config", lambda cfg: None)(cfg)  # and the objective's
    except ValueError as error:
        raise UserError(str(error)) from None
    if cfg.meta != "none" and getattr(method_cls, "meta_learner", False):
        raise UserError(f"--base {cfg.base} is itself a meta-learner and cannot run inside --meta {cfg.meta} "
                        f"(nested meta-learning); use --meta none")
    if cfg.meta == "gessl" and getattr(method_cls, "episodic", False):
        episode = cfg.episode_size
        check_tasks(episode, cfg.tasks_per_step or 1, cfg.support_ratio,
                    f"the {episode}-image episodes ({cfg.episode_ways} ways, 2 images of each class per set)",
                    least=2 * cfg.episode_ways)


def variant(cfg):
    """The names that make up a run: the base method, then the regulariser and meta-optimiser if any."""
    return [cfg.base] + [name for name in (cfg.reg, cfg.meta) if name != "none"]


def build_model(cfg, in_channels, num_classes):
    """The backbone, base method and regulariser named by ``cfg``, initialised from ``cfg.seed``.

    The method's constructor takes the feature dimension, then keywords filled from its options
    (``cfg.base_options``) and the shared options of the same name, and ``num_classes`` (the training
    classes) and ``backbone`` (the backbone just built, which momentum methods copy) if it asks for them.
    """
    method_cls = method_class(cfg.base)
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.backbone, in_channels, cfg.image_size)
    known = {**{name: getattr(cfg, name) for name in SHARED}, **dataclasses.asdict(cfg.base_options),
             "num_classes": num_classes, "backbone": backbone}
    keywords = [p for p in list(inspect.signature(method_cls).parameters.values())[1:]  # after the feature dimension
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    missing = [p.name for p in keywords if p.name not in known]
    if missing:
        raise UserError(f"--base {cfg.base}: its constructor takes {', '.join(missing)}, which is no option: add "
                        f"{'it' if len(missing) == 1 else 'them'} to its Options dataclass (docs/bases.md)")
    method = method_cls(backbone.out_dim, **{p.name: known[p.name] for p in keywords})
    make_regulariser = pick(REGULARISERS, cfg.reg, "--reg")
    regulariser = make_regulariser(cfg, backbone, in_channels, method.proj_dim) if make_regulariser else None
    return SSLModel(backbone, method, regulariser)


def data_record(cfg, images, labels):
    """What a run trains on: the data set, a fingerprint of its training images and labels (equal
    fingerprints: the same data) and, for a glyph set, the font files it was drawn with (checksums)."""
    digest = hashlib.blake2b(images.numpy().tobytes(), digest_size=8)
    digest.update(labels.numpy().tobytes())
    record = {"dataset": cfg.dataset, "fingerprint": digest.hexdigest(), "images": len(labels),
              "classes": int(labels.max()) + 1}
    if cfg.dataset in GLYPH_FONTS:
        record["fonts"] = font_list(GLYPH_FONTS[cfg.dataset](cfg.data_root))
    return record


def build_optimizer(model, cfg):
    """``cfg.optimizer`` over the model's parameters: Adam, or SGD with momentum 0.9.

    A base method may hold submodules at a constant learning rate: its ``constant_lr`` maps a
    submodule's name to a multiple of ``cfg.lr``; their parameters form groups whose ``constant_lr``
    ``train_step`` sets in place of the warm-up and decay (SimSiam's predictor)."""
    method = getattr(model, "method", None)
    constant = {name: scale for name, scale in getattr(method, "constant_lr", {}).items() if scale > 0}
    groups, taken = [], set()
    for name, scale in constant.items():
        params = list(getattr(method, name).parameters())
        taken |= {id(p) for p in params}
        groups.append({"params": params, "constant_lr": cfg.lr * scale})
    groups.insert(0, {"params": [p for p in model.parameters() if id(p) not in taken]})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(step, cfg, total_steps):
    """Linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def step_batch(images, labels, cfg, step, steps_per_epoch, augment, placement, shard=slice(None)):
    """The images of training step ``step``, two augmented views of them and their class labels
    (deterministic in ``cfg.seed`` and ``step``): ``{"images": x, "views": [x¹, x²], "labels": y}``.
    Only label-using methods (``supervised``) read the labels. ``shard``: this process's share."""
    epoch, i = divmod(step, steps_per_epoch)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
    idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
    return views_batch(images[idx], labels[idx], cfg, step, augment, placement, shard)


def episode_batch(images, episodes, cfg, step, augment, placement):
    """``step_batch`` for episodic methods: the images of step ``step``'s episode (``tasks.training.episodes``),
    their views and their episode labels 0..ways−1, in the episode's layout."""
    idx, labels = episodes.sample(cfg.seed, step)
    return views_batch(images[idx], labels, cfg, step, augment, placement)


def views_batch(images, labels, cfg, step, augment, placement, shard=slice(None)):
    """``uint8`` images scaled to [0, 1], two augmented views (seeded by ``cfg.seed`` and ``step``) and
    labels, cut to ``shard``. The views of the whole batch are drawn, then cut, so that a process's
    share is the same whatever the number of processes."""
    x = placement.put(images).float().div_(255)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    gen = torch.Generator(x.device).manual_seed(cfg.seed * 1_000_003 + step)  # draws on x's device: no host sync
    views = [placement.layout(augment(x, gen)[shard]) for _ in range(2)]
    return {"images": placement.layout(x[shard]), "views": views, "labels": placement.put(labels[shard])}


class Trainer:
    """Owns one run folder: builds the model, trains it, checkpoints and logs.

    ``processes`` is this process's place among those of the run (``gessl.distributed``); only the
    main one (rank 0) writes files and shows progress.
    """

    def __init__(self, cfg, run_dir, resume=False, processes=Processes(), omit=()):
        self.cfg, self.run_dir, self.processes = cfg, Path(run_dir), processes
        self.omit = omit  # the options that do not act on this run, left out of what is saved
        self.device = processes.place(resolve_device(cfg.device))
        self.placement = Placement.from_config(cfg, self.device)
        images, labels = load_split(cfg.dataset, "background", cfg.data_root, cfg.image_size)
        self.images, self.labels = torch.as_tensor(images), torch.as_tensor(labels)
        self.data = data_record(cfg, self.images, self.labels)
        # Episodic methods (protonet, maml, cactus) train on one episode a step; --batch-size does not apply
        # and an epoch is as many episodes as hold the training set's number of images.
        episodic = getattr(method_class(cfg.base), "episodic", False)
        self.images_per_step = cfg.episode_size if episodic else cfg.batch_size
        self.steps_per_epoch = len(self.images) // self.images_per_step
        if self.steps_per_epoch == 0:
            step = (f"an episode of {self.images_per_step} images (--episode-ways x (--episode-shots + "
                    f"--episode-queries))" if episodic else f"--batch-size {cfg.batch_size}")
            raise UserError(f"{step} is larger than the {len(self.images)} training images; use a smaller "
                            f"{'episode' if episodic else 'batch'}")
        self.in_channels = 1 if self.images.dim() == 3 else self.images.shape[1]
        self.model = self._build_model()
        # The episodes: over the class labels, or over labels the method makes from the images with the
        # backbone at its seeded initialisation (CACTUs' clusters; before a --resume loads the checkpoint).
        self.episodes = None
        if episodic and hasattr(self.model.method, "episode_sampler"):
            self.episodes = self._method_episodes()
        elif episodic:
            self.episodes = EpisodeSampler(self.labels, *(getattr(cfg, name) for name in EPISODE_OPTIONS))
        self.optimizer = build_optimizer(self.model, cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.placement.amp == torch.float16)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.augment = GlyphAugment.from_config(cfg)
        self.objective = META_OPTIMISERS[cfg.meta].from_config(cfg)
        # GeSSL runs the model functionally, out of DDP's sight, and averages its gradients itself.
        self.net = self.model if cfg.meta == "gessl" else processes.wrap(
            self.model, self.device, broadcast_buffers=getattr(self.model.method, "broadcast_buffers", True))
        self.step = self.saved_step = 0  # saved_step: the step of the checkpoint on disk (0: none)
        self.warned_collapse = False
        if resume:
            self._load_checkpoint()

    def _build_model(self):
        """``build_model`` on the device, with ``--sync-bn`` (several processes), ``--channels-last``
        and ``--compile``."""
        model = build_model(self.cfg, self.in_channels, int(self.labels.max()) + 1)
        if self.cfg.sync_bn and self.processes.world > 1:
            model.backbone = convert_sync_batchnorm(model.backbone)
            model.method = convert_sync_batchnorm(model.method)
        model.to(self.device)
        if self.placement.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.cfg.compile:
            model.backbone.compile()
        return model

    def _method_episodes(self):
        """The method's own episodes (CACTUs' clusters): ``episode_sampler`` given the frozen encoder (the
        backbone file its ``encoder_file`` names, else the run's backbone at its seeded initialisation),
        the suite's ``embed``, the ``EpisodeSampler`` and a progress bar."""
        method, path = self.model.method, getattr(self.model.method, "encoder_file", None)
        encoder = self.model.backbone
        if path is not None:
            encoder, meta = load_backbone(path)
            channels = self.in_channels
            if meta["in_channels"] != channels or meta["image_size"] != self.images.shape[-1]:
                raise UserError(f"the frozen encoder {path} takes {meta['in_channels']}-channel "
                                f"{meta['image_size']}-pixel images but the data's are {channels}-channel "
                                f"{self.images.shape[-1]}-pixel; use a backbone trained on this kind of data")
            encoder.to(self.device)
        progress = functools.partial(tqdm, desc=f"{self.cfg.base} episodes", leave=False,
                                     disable=not self.processes.main)
        try:
            return method.episode_sampler(self.images, encoder, embed, EpisodeSampler, self.cfg.seed, progress)
        except ValueError as error:
            raise UserError(str(error)) from None

    @property
    def checkpoint_path(self):
        return self.run_dir / "checkpoint.pt"

    def _load_checkpoint(self):
        if not self.checkpoint_path.is_file():
            raise UserError(f"{self.run_dir} has no checkpoint: the run stopped before its first; start it "
                            f"again without --resume (its files begin anew)")
        state = load_torch_file(self.checkpoint_path, "checkpoint", self.device)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{self.checkpoint_path} is not a gessl checkpoint; delete it or choose another --out")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"{self.checkpoint_path} does not fit the run's config.yaml ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]}); was config.yaml edited? restore it or start a new "
                            f"run") from None
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step = self.saved_step = state["step"]
        trained_on = state.get("data", {}).get("fingerprint")
        if trained_on not in (None, self.data["fingerprint"]):
            raise UserError(f"the training data of --dataset {self.cfg.dataset} differ from the run's (fingerprint "
                            f"{self.data['fingerprint']}, the run's {trained_on}; {DATA_FILE} lists what it was "
                            f"drawn with): resume on the same data, or start a new run with another --out")
        # Records logged after the checkpoint belong to steps that will be run again.
        metrics = self.run_dir / "metrics.jsonl"
        if self.processes.main and metrics.exists():
            kept = [r for r in read_jsonl(metrics) if r["step"] <= self.step]
            atomic_write_text(metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def save_checkpoint(self):
        """Write ``checkpoint.pt`` and ``backbone.pt`` atomically (the main process only), and with
        ``--keep-backbones`` also ``backbones/step-N.pt``, the backbone of step N."""
        if not self.processes.main:
            return
        state = {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "step": self.step, "data": self.data,
                 "config": self.cfg.as_dict(self.omit)}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        save_torch_file(state, self.checkpoint_path)
        self.saved_step = self.step
        kept = [self.run_dir / "backbone.pt"]
        if self.cfg.keep_backbones:
            kept.append(self.run_dir / "backbones" / f"step-{self.step}.pt")
        save_backbone(self.model.backbone, self.cfg.backbone, self.in_channels, self.cfg.image_size, *kept,
                      step=self.step)

    def train_step(self):
        """One optimiser step; returns its logs (tensors or numbers, read only when logged)."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group.get("constant_lr", lr)
        self.net.train()
        if self.episodes is not None:
            batch = episode_batch(self.images, self.episodes, cfg, self.step, self.augment, self.placement)
        else:
            batch = step_batch(self.images, self.labels, cfg, self.step, self.steps_per_epoch, self.augment,
                               self.placement, self.processes.shard(cfg.batch_size))
        self.optimizer.zero_grad(set_to_none=True)
        diagnose = (self.step + 1) % cfg.log_every == 0
        # fp16 (plain step only): the loss is multiplied by the scaler's factor before backward
        scaling = ({"loss_scale": self.scaler.scale(torch.ones((), device=self.device))}
                   if self.scaler.is_enabled() else {})
        with self.placement.autocast():
            batch = self.model.prepare_batch(batch)
            logs = self.objective.compute_gradients(self.net, batch, diagnose=diagnose, **scaling)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.model.after_step(self.step / self.total_steps)
        return {"lr": lr, **logs}

    def fit(self):
        """Train until ``total_steps``, checkpointing every ``ckpt_every`` steps and at the end.

        Ctrl-C or SIGTERM stops the run after the step under way, which finishes (a step cut short
        would leave BatchNorm statistics or a queue half-updated), with a checkpoint and one line
        (``UserError``); a second signal stops it at once, keeping the last checkpoint. The logs are
        read (averaged over processes) only on the steps that log or checkpoint, so a GPU is not made
        to wait every step; there the run also stops if it diverged (``check_diverged``).
        """
        cfg, main = self.cfg, self.processes.main
        log_path = self.run_dir / "metrics.jsonl"
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"{'+'.join(variant(cfg))}/{cfg.backbone}",
                   unit="step", dynamic_ncols=True, disable=not main)
        tick, tick_step = time.time(), self.step
        stopped = False
        try:
            with DeferredStop() as stop:
                while self.step < self.total_steps and not stopped:
                    logs = self.train_step()
                    bar.update(1)
                    log = self.step % cfg.log_every == 0 or self.step == self.total_steps
                    if log or self.step % cfg.ckpt_every == 0:
                        logs = self.processes.average(logs)
                        self.check_diverged(logs["loss"])
                        bar.set_postfix(loss=f"{logs['loss']:.3f}")
                        if main:
                            self.warn_collapse(logs, bar)
                        if log and main:
                            now = time.time()
                            rate = (self.step - tick_step) * self.images_per_step / max(now - tick, 1e-9)
                            append_jsonl(log_path, [{"step": self.step, "epoch": (self.step - 1) // self.steps_per_epoch,
                                                     **logs, "img_per_s": rate, "time": now}])
                            tick, tick_step = now, self.step
                        if self.step % cfg.ckpt_every == 0:
                            self.save_checkpoint()
                    stopped = self.processes.any(stop.requested)
                bar.close()
                if self.saved_step != self.step:
                    self.check_diverged()
                    self.save_checkpoint()
        except KeyboardInterrupt as exc:  # the second signal
            bar.close()
            raise UserError(f"stopped at once by a second {exc.args[0] if exc.args else 'SIGINT'} during step "
                            f"{self.step + 1}; {self._kept()}; continue with `python -m gessl.train --out "
                            f"{self.run_dir} --resume`") from None
        except WriteError as exc:  # a full or read-only disk
            bar.close()
            raise UserError(f"{exc}; {self._kept()}: continue with `python -m gessl.train --out {self.run_dir} "
                            f"--resume` once it can be written") from None
        if stopped:
            raise UserError(f"stopped by {stop.requested or 'a signal to another process'} after step {self.step}, "
                            f"saved; continue with `python -m gessl.train --out {self.run_dir} --resume`")

    def _kept(self):
        """What is on disk: the checkpoint of the last saved step, or nothing."""
        if self.saved_step:
            return f"the checkpoint of step {self.saved_step} in {self.run_dir} is kept"
        return "no checkpoint was saved yet"

    def warn_collapse(self, logs, bar):
        """Say once, above the progress bar, when a logged step's collapse diagnostics (``gessl.collapse``)
        fall below their thresholds; the run goes on."""
        low = collapsing(logs)
        if low and not self.warned_collapse:
            self.warned_collapse = True
            found = ", ".join(f"{name} {logs[name]:.3g} (< {THRESHOLDS[name]:g})" for name in low)
            bar.write(f"warning: step {self.step}: the projections look collapsed: {found}; the backbone "
                      f"may learn little (metrics.jsonl logs these every --log-every steps)", file=sys.stderr)

    def check_diverged(self, loss=None):
        """Raise ``UserError`` when the loss (the averaged loss of a logged step, if given) or any
        weight or buffer is not finite: the run stops there, before a checkpoint could hold it."""
        bad = [] if loss is None or math.isfinite(loss) else [f"the loss became {loss}"]
        broken = not_finite(self.model.state_dict())
        if broken:
            bad.append(f"{len(broken)} weight or buffer tensors are not finite ({', '.join(broken[:3])})")
        if self.processes.any(bad):
            raise UserError(f"training diverged by step {self.step}: {'; '.join(bad) or 'on another process'}; "
                            f"{self._kept()}; train again with a lower --lr (now {self.cfg.lr})")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m gessl.train", description=__doc__.split("\n\n")[0],
        epilog="Several processes (gloo on CPU, nccl with one GPU each): torchrun --nproc_per_node N "
               "-m gessl.train ...; --batch-size is then the global batch, each process takes 1/N of it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=argparse.SUPPRESS, help="YAML file of options (flags override it)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its checkpoint.pt (its config.yaml, with the flags given)")
    add_config_flags(parser, help_methods(sys.argv[1:] if argv is None else argv))
    return vars(parser.parse_args(argv))


def file_options(args):
    """The options of the ``--config`` file among parsed ``args`` (taken out of them), or ``{}``."""
    return read_yaml(args.pop("config")) if "config" in args else {}


def config_from_flags(argv):
    """The checked ``TrainConfig`` that ``python -m gessl.train ARGV`` trains as a new run (flags as
    strings, a ``--config`` file read; ``--out`` as given, empty when not): argparse's usage error
    (``SystemExit``, on stderr) for a flag it does not take, ``UserError`` for a value it refuses."""
    args = parse_args(argv)
    args.pop("resume")
    return resolve_config(file_options(args), args)


def help_methods(argv):
    """The base methods whose options get flags: every registered one, and a ``--base MODULE:CLASS``
    given on the command line; with ``--help``, the ``--base`` given alone, if one is."""
    base = argparse.ArgumentParser(add_help=False)
    base.add_argument("--base")
    name = base.parse_known_args(argv)[0].base
    if name is None:
        return BASE_METHODS
    if any(arg in ("-h", "--help") for arg in argv):
        return {name: method_class(name)}
    return {**BASE_METHODS, name: method_class(name)}


def prepare_run(args):
    """Resolve the config and the run folder from parsed flags, refusing to overwrite a run.

    Returns ``(cfg, run_dir, resume, given)``, ``given`` the options set by a flag or ``--config``.
    """
    resume = args.pop("resume")
    file_layer = file_options(args)
    given = (set(file_layer) | set(args)) - {"out"}
    if resume:
        if not args.get("out"):
            raise UserError("--resume needs --out DIR, the run folder to continue")
        saved = Path(args["out"]) / "config.yaml"
        if not saved.is_file():
            raise UserError(f"{saved} does not exist: {args['out']} is not a run folder; "
                            f"start a new run without --resume")
        run = read_run_config(args["out"])
        cfg = resolve_config(run.as_dict(), file_layer, args)
        ignored = inactive_options(run)
        changed = [f"--{name.replace('_', '-')} ({run.value(name)!r} -> {cfg.value(name)!r})"
                   for name in sorted(given - RESUMABLE - set(ignored)) if cfg.value(name) != run.value(name)]
        if changed:
            raise UserError(f"--resume cannot change {', '.join(changed)}: that defines the run in {args['out']}; "
                            f"drop the flag, or start a new run with another --out (a resume may change "
                            f"{', '.join('--' + n.replace('_', '-') for n in sorted(RESUMABLE - {'out'}))})")
    else:
        cfg = resolve_config(file_layer, args)
        if not cfg.out:
            cfg = dataclasses.replace(cfg, out=f"runs/{'-'.join(variant(cfg))}-{cfg.backbone}-seed{cfg.seed}")
        if (Path(cfg.out) / "checkpoint.pt").exists():
            raise UserError(f"{cfg.out} already holds a run; continue it with --resume or choose another --out")
    check_names(cfg)
    return cfg, Path(cfg.out), resume, given


def inactive_options(cfg, world=1):
    """``{option: why}`` for the options that do not act on the run ``cfg`` in ``world`` processes:
    another base method's, GeSSL's under ``--meta none``, DSA's without ``--reg dsa`` (and its EMA
    momentum with another prior), ``--batch-size`` for an episodic method, ``--sync-bn`` alone."""
    method_cls = method_class(cfg.base)
    episodic = getattr(method_cls, "episodic", False)
    names = {f.name for f in dataclasses.fields(cfg)}
    own = {f.name for f in dataclasses.fields(cfg.base_options)}
    takes = set(inspect.signature(method_cls).parameters)
    out = {name: f"with --base {cfg.base}" for name in set(registered_options()) - own}
    if not episodic:
        out.update({name: f"with --base {cfg.base}" for name in EPISODE_OPTIONS if name not in takes})
    meta_options = {name: {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
                    for name, cls in META_OPTIMISERS.items()}
    out.update({name: f"with --meta {cfg.meta}" for name in set().union(*meta_options.values()) - meta_options[cfg.meta]})
    if cfg.reg != "dsa":
        out.update({name: f"with --reg {cfg.reg}" for name in names if name.startswith("dsa_")})
    elif cfg.dsa_prior != "ema":
        out["dsa_ema"] = f"with --dsa-prior {cfg.dsa_prior} (only the ema prior moves)"
    if episodic:
        out["batch_size"] = f"with --base {cfg.base} (a step is one episode)"
    if world == 1:
        out["sync_bn"] = "in one process (torchrun starts several)"
    return out


def warn_inactive(inactive, given):
    """One line on stderr naming the ``given`` options that do not act (``inactive``), if any."""
    ignored = {}
    for name in sorted(given & set(inactive)):
        ignored.setdefault(inactive[name], []).append("--" + name.replace("_", "-"))
    if ignored:
        print("warning: options that do not act on this run, so not saved in config.yaml: "
              + "; ".join(f"{', '.join(flags)} ({why})" for why, flags in ignored.items()), file=sys.stderr)


def main(argv=None):
    cfg, run_dir, resume, given = prepare_run(parse_args(argv))
    processes = Processes.from_environment()
    check_world(cfg, processes.world, getattr(method_class(cfg.base), "episodic", False))
    inactive = inactive_options(cfg, processes.world)
    with processes.group(processes.place(resolve_device(cfg.device))):
        with claimed(run_dir, fresh=not resume) if processes.main else contextlib.nullcontext():
            trainer = Trainer(cfg, run_dir, resume=resume, processes=processes, omit=inactive)
            if processes.main:
                warn_inactive(inactive, given)
                atomic_write_text(run_dir / "config.yaml", cfg.to_yaml(omit=inactive))
                atomic_write_text(run_dir / DATA_FILE, json.dumps(trainer.data, indent=1) + "\n")
            started = time.time()
            trainer.fit()
    if not processes.main:
        return
    minutes = (time.time() - started) / 60
    print(f"trained {trainer.step} steps in {minutes:.1f} min; run folder: {run_dir}")
    if cfg.eval_episodes:
        records = evaluate_run(run_dir, "quick", device=cfg.device, **CLOSING_CHECK, episodes=cfg.eval_episodes)
        print_table(records)


if __name__ == "__main__":
    run_cli(main)
