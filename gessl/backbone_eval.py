"""The universality suite on any backbone, on the data sets the user names.

``python -m gessl.evaluate --backbone SPEC [--weights FILE] --datasets NAME... --out DIR`` and, in
Python, ``gessl.evaluate_backbone(model, datasets=[...], out=DIR)``. A backbone maps images
``[B, C, H, W]`` (floats in [0, 1]) to features; SPEC names how to build it:

- ``conv4`` / ``resnet18``: the project's own (``gessl.backbones``), built for ``--in-channels``
  (default 1) and ``--image-size`` (default 28);
- ``torchvision:NAME``: a torchvision classification model with its classifier (``fc``,
  ``classifier``, ``head`` or ``heads``) replaced by the identity;
- ``MODULE:FACTORY``: any importable callable returning an ``nn.Module``, given ``in_channels`` and
  ``image_size`` when its signature has them and the flags are set.

``--weights`` is a state dict, or a file holding one under ``state_dict`` (a run's ``backbone.pt``,
whose ``in_channels`` and ``image_size`` then serve as the flags' defaults), read with
``weights_only=True``; the keys of a removed classifier are dropped, and any other missing,
unexpected or misshapen key is a one-line error before anything is written. When ``--in-channels``
differs from what the first convolution takes, that convolution is rebuilt for it: its weights
summed over the input channels for one channel (a grey image as equal red, green and blue), else
cycled over the new channels and scaled by old / new channels (``docs/api.md``).

Each data set (a registry name or ``folder:PATH``, an ImageFolder tree) is a transferability target
(``tasks.evaluation.suite.transfer_target``), measured by ``gessl.evaluate``'s functions, so the
numbers are those a run folder gets on the same data: the backbone as ``NAME`` (``--out``'s folder
name) and its random-initialised twin (the same SPEC built after ``torch.manual_seed(seed)``) as
``NAME (random init)``, on the same episodes. Records are appended to ``OUT/results.jsonl`` and the
per-episode accuracies merged into ``OUT/episodes.npz``, as for a run folder; ``analysis.report`` reads
OUT like one.
"""
import argparse
import copy
import importlib
import inspect
import math
import os
import sys
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from gessl.backbones import BACKBONES, build_backbone, load_torch_file, not_finite
from gessl.device import resolve_device
from gessl.distributed import Processes
from gessl.evaluate import get_suite, load_target, save_episode_accuracies, score_models
from tasks.common.errors import UserError
from tasks.common.io import append_jsonl, make_folder
from tasks.data.registry import DATASETS, fetch_missing
from tasks.evaluation.suite import RANDOM_SUFFIX, transfer_target

CLASSIFIER_NAMES = ("fc", "classifier", "head", "heads")  # a torchvision model's classifier, removed


def first_conv(model):
    """The name and module of ``model``'s first ``nn.Conv2d`` (in ``named_modules`` order), or (None, None)."""
    return next(((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))


def adapt_first_conv(model, in_channels):
    """Rebuild ``model``'s first convolution, in place, to take ``in_channels`` channels (see the module
    docstring); nothing when it already does or the model has none."""
    name, conv = first_conv(model)
    if conv is None or conv.in_channels == in_channels:
        return model
    if conv.groups != 1:
        raise UserError(f"the first convolution ({name}) of the backbone is grouped; it cannot be adapted to "
                        f"--in-channels {in_channels}: give images of {conv.in_channels} channels")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        old = conv.in_channels
        weight = (conv.weight.sum(1, keepdim=True) if in_channels == 1 else
                  conv.weight.repeat(1, math.ceil(in_channels / old), 1, 1)[:, :in_channels] * old / in_channels)
        new.weight.copy_(weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new.to(conv.weight.device))
    return model


def _torchvision(name):
    """A torchvision classification model, randomly initialised, with its classifier replaced by the identity;
    returns it and the key prefix of the classifier's weights."""
    from torchvision import models
    known = models.list_models(module=models)
    if name not in known:
        raise UserError(f"unknown torchvision model {name!r}; choose one of torchvision's classification models, "
                        f"e.g. {', '.join(n for n in ('resnet18', 'resnet50', 'mobilenet_v3_small') if n in known)}")
    net = models.get_model(name, weights=None)
    head = next(attr for attr in CLASSIFIER_NAMES if isinstance(getattr(net, attr, None), nn.Module))
    setattr(net, head, nn.Identity())
    return net, head + "."


def _imported(spec, in_channels, image_size):
    """The ``nn.Module`` that ``MODULE:FACTORY`` returns, given ``in_channels`` / ``image_size`` if it takes them."""
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a module of the folder the user works in, as `python -m` finds it
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except ImportError as e:
        raise UserError(f"--backbone {spec}: cannot import {module_name} ({e}); run from the folder that holds it "
                        "or add it to PYTHONPATH") from None
    except AttributeError:
        raise UserError(f"--backbone {spec}: module {module_name} has no {attr!r}") from None
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    given = {"in_channels": in_channels, "image_size": image_size}
    net = factory(**{k: v for k, v in given.items() if k in accepted and v is not None})
    if not isinstance(net, nn.Module):
        raise UserError(f"--backbone {spec} returned a {type(net).__name__}, not a torch.nn.Module")
    return net


def backbone_factory(spec, in_channels=None, image_size=None):
    """A callable that builds the backbone SPEC names (see the module docstring), randomly initialised; it
    returns the model and the key prefix of a removed classifier's weights (None: none removed)."""
    if spec in BACKBONES:
        return lambda: (build_backbone(spec, in_channels or 1, image_size or 28), None)
    if spec.startswith("torchvision:"):
        return lambda: _torchvision(spec[len("torchvision:"):])
    if ":" in spec.strip(":"):
        return lambda: (_imported(spec, in_channels, image_size), None)
    raise UserError(f"unknown --backbone {spec!r}; give {' or '.join(BACKBONES)}, torchvision:NAME or "
                    "MODULE:FACTORY")


def read_weights(path):
    """The state dict in the file ``path`` (itself one, or under a ``state_dict`` key) and the file's other
    entries (a run's ``backbone.pt`` also names ``in_channels`` and ``image_size``)."""
    if not Path(path).is_file():
        raise UserError(f"no weights file at {path}; save one with torch.save(model.state_dict(), FILE)")
    payload = load_torch_file(path, "weights")
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not (isinstance(state, dict) and state and all(torch.is_tensor(v) for v in state.values())):
        raise UserError(f"{path} holds no state dict (a dict of tensors, or one under a 'state_dict' key)")
    broken = not_finite(state)
    if broken:
        raise UserError(f"{path} holds weights that are not finite ({', '.join(broken[:3])})")
    return state, {k: v for k, v in payload.items() if k != "state_dict"} if state is not payload else {}


def _names(keys, limit=3):
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_weights(model, state, path, spec):
    """``model.load_state_dict(state)`` after checking that every key and shape fits: one line naming what does not."""
    own = model.state_dict()
    problems = [f"{what} {_names(keys)}" for what, keys in (
        ("missing", [k for k in own if k not in state]),
        ("unexpected", [k for k in state if k not in own]),
        ("misshapen", [f"{k} {list(state[k].shape)}, not {list(own[k].shape)}" for k in own
                       if k in state and state[k].shape != own[k].shape])) if keys]
    if problems:
        raise UserError(f"{path} does not fit --backbone {spec} ({'; '.join(problems)}); give the weights of "
                        "that architecture")
    model.load_state_dict(state)


def build_from_spec(spec, weights=None, in_channels=None, image_size=None, seed=0):
    """The backbone SPEC names with ``weights`` loaded, its random-initialised twin (built after
    ``torch.manual_seed(seed)``), and the image channels and size to feed them (None: each data set's own size)."""
    state, meta = read_weights(weights) if weights else (None, {})
    in_channels = in_channels or meta.get("in_channels")
    image_size = image_size or meta.get("image_size") or (28 if spec in BACKBONES else None)
    make = backbone_factory(spec, in_channels, image_size)
    model, head = make()
    if state is not None:
        state = {k: v for k, v in state.items() if head is None or not k.startswith(head)}
        name, _ = first_conv(model)
        weight = state.get(f"{name}.weight")
        if in_channels and weight is not None and weight.dim() == 4 and weight.shape[1] == in_channels:
            adapt_first_conv(model, in_channels)  # weights saved for these channels: load them as they are
        load_weights(model, state, weights, spec)
    torch.manual_seed(seed)
    twin, _ = make()
    if in_channels:
        adapt_first_conv(model, in_channels)
        adapt_first_conv(twin, in_channels)
    return model, twin, in_channels, image_size


def reinitialised(model, seed=0):
    """A copy of ``model`` whose every submodule with ``reset_parameters`` is re-initialised after
    ``torch.manual_seed(seed)``: the random twin of a model given without its factory."""
    twin = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in twin.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return twin


def evaluate_backbone(model, datasets, out, *, random_twin=None, name=None, in_channels=None, image_size=None,
                      suite="standard", seed=0, device="auto", data_root=None, processes=Processes(), **changes):
    """Score ``model`` and its random twin on each of ``datasets`` as a transferability target; append the
    records to ``out/results.jsonl``, merge the per-episode accuracies into ``out/episodes.npz`` and return
    the records (see the module docstring).

    ``model``: an ``nn.Module`` (or callable) mapping images ``[B, C, H, W]`` in [0, 1] to features; a module
    is moved to ``device``.
    ``random_twin``: the same architecture randomly initialised (None: ``reinitialised(model, seed)``).
    ``name``: the model's name in the records (None: ``out``'s folder name). ``in_channels``: the images'
    channels (None: those of the model's first convolution). ``image_size``: the side images are resized
    to (None: each data set's own). ``suite`` and ``changes`` (``episodes``, ``shots``, ``ways``, ...) as
    for ``gessl.evaluate.evaluate_run``. Every data set is read and every episode setting checked
    before the first image is embedded; a problem is a ``UserError`` and nothing is written.
    """
    out, suite = Path(out), get_suite(suite, **changes)
    if not datasets:
        raise UserError("name at least one data set to score the backbone on (--datasets NAME...)")
    if in_channels is None:
        conv = first_conv(model)[1] if isinstance(model, nn.Module) else None
        if conv is None:
            raise UserError("cannot tell the channels of the images the backbone takes (it has no Conv2d); "
                            "give them (--in-channels)")
        in_channels = conv.in_channels
    twin = reinitialised(model, seed) if random_twin is None else random_twin
    name = name or out.resolve().name
    targets = [transfer_target(d, data_root or "") for d in dict.fromkeys(datasets)]
    where = SimpleNamespace(data_root=data_root or "", image_size=image_size)
    data = [load_target(target, where, in_channels, suite, seed) for target in targets]
    dev = processes.place(resolve_device(device))
    common = {"seed": seed, "suite": suite.name, "version": version("gessl"), "train_data": None}
    models = {name: model, name + RANDOM_SUFFIX: twin}
    records, accuracies = score_models(models, data, suite, seed, dev, {run: {**common, "run": run} for run in models},
                                       processes)
    if processes.main:
        make_folder(out)
        append_jsonl(out / "results.jsonl", records)
        save_episode_accuracies(out / "episodes.npz", accuracies)
    return records


FLAGS = ("backbone", "weights", "image_size", "in_channels", "datasets", "out")


def add_flags(parser):
    """The flags of ``python -m gessl.evaluate --backbone`` (absent from the namespace until ``check_flags``)."""
    group = parser.add_argument_group("a backbone instead of run folders (docs/api.md)")
    flag = lambda name, **kwargs: group.add_argument(name, default=argparse.SUPPRESS, **kwargs)  # noqa: E731
    flag("--backbone", metavar="SPEC", help=f"{' | '.join(BACKBONES)} | torchvision:NAME (its classifier removed) | "
         "MODULE:FACTORY (a callable returning an nn.Module)")
    flag("--weights", metavar="FILE", help="a state dict, or a file with one under 'state_dict' (a run's "
         "backbone.pt); default: the backbone's random initialisation")
    flag("--image-size", type=int, metavar="N", help="side the images are resized to (default: a run's "
         "backbone.pt's, 28 for conv4/resnet18, else each data set's own)")
    flag("--in-channels", type=int, choices=[1, 3], help="channels of the images; the first convolution is "
         "adapted to them (default: those it takes)")
    flag("--datasets", nargs="+", metavar="NAME", help="registry names or folder:PATH (ImageFolder trees), each "
         "scored as a transfer target")
    flag("--out", metavar="DIR", help="folder of the results (default: eval/SPEC, ':' as '-')")


def check_flags(parser, args):
    """Set the flags not given to None; ``parser.error`` for flags that do not go together."""
    for name in FLAGS:
        setattr(args, name, getattr(args, name, None))
    if args.backbone is None:
        given = [name for name in FLAGS if getattr(args, name)]
        if given:
            parser.error(f"--{given[0].replace('_', '-')} goes with --backbone")
    elif args.run_dirs or getattr(args, "compare", None):
        parser.error("give RUN_DIRs (or --compare) or --backbone, not both")
    elif not args.datasets:
        parser.error("--backbone needs --datasets NAME...")


def evaluate_spec(args, processes, **changes):
    """``evaluate_backbone`` on the backbone the flags name (every check made before anything is written)."""
    model, twin, in_channels, image_size = build_from_spec(args.backbone, args.weights, args.in_channels,
                                                           args.image_size, args.seed)
    registry = [d for d in dict.fromkeys(args.datasets) if d in DATASETS and DATASETS[d].fetch]
    if registry and not args.offline and processes.main:
        for note in fetch_missing(registry, args.data_root or "", say=lambda line: print(line, file=sys.stderr)):
            print(f"note: {note}", file=sys.stderr)
    processes.barrier()
    out = args.out or Path("eval") / args.backbone.replace(":", "-").replace("/", "-")
    return evaluate_backbone(model, args.datasets, out, random_twin=twin, in_channels=in_channels,
                             image_size=image_size, suite=args.suite, seed=args.seed, device=args.device,
                             data_root=args.data_root, processes=processes, **changes)
