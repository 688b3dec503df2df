"""A base method's options: a dataclass beside its loss, registered as the method's ``Options``.

Each field is one option: its name is the method's constructor keyword, the training config's key
(``config.yaml`` records a run's under the method's name) and, with ``_`` written ``-``, the flag of
``python -m gessl.train``; ``option(default, help, check)`` gives its default, its ``--help`` text
and its bounds. A check returns what is wrong with a value, or None; ``problems`` runs them, then the
dataclass's own ``check()`` (for rules that tie two options together), if it has one. The training
config (``gessl.config``) checks its shared options with the same functions.
"""
import dataclasses
import math
import typing


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


def at_least(low):
    def check(value):
        return None if value >= low else f"must be at least {low}"
    return check


def one_of(*choices):
    def check(value):
        return None if value in choices else f"must be {', '.join(choices[:-1])} or {choices[-1]}"
    return check


def option(default, help, check=None):
    """A dataclass field for one option: its ``default``, ``--help`` text and ``check`` (or None)."""
    return dataclasses.field(default=default, metadata={"help": help, **({"check": check} if check else {})})


def option_types(options):
    """``{name: type}`` of the fields of the dataclass (or instance) ``options``, annotations resolved."""
    hints = typing.get_type_hints(options if isinstance(options, type) else type(options))
    return {f.name: hints[f.name] for f in dataclasses.fields(options)}


def problems(options):
    """``(name, what is wrong)`` for each option of the dataclass instance ``options`` out of its bounds
    (``"must be positive, got -1"``), then the pairs its ``check()`` returns, if it has one."""
    found, types = [], option_types(options)
    for f in dataclasses.fields(options):
        value, kind = getattr(options, f.name), types[f.name]
        if kind is float and not math.isfinite(value):
            found.append((f.name, f"must be a finite number, got {value}"))
            continue
        problem = f.metadata["check"](value) if "check" in f.metadata else None
        if problem:
            found.append((f.name, f"{problem}, got {value if kind in (int, float) else repr(value)}"))
    return found + list(getattr(options, "check", lambda: [])())


@dataclasses.dataclass
class NoOptions:
    """The options of a method that has none."""


@dataclasses.dataclass
class Projector:
    """The widths of a method's projector MLP (SimCLR's: ``feat_dim → hidden → dim``)."""

    proj_hidden: int = option(512, "hidden width of the projector", positive)
    proj_dim: int = option(128, "output width of the projector", positive)


@dataclasses.dataclass
class Adaptation:
    """MAML's adaptation of a linear head to a task's support set (MAML, and UMTRA's and CACTUs' ``maml``)."""

    maml_inner_steps: int = option(5, "K, SGD steps adapting the head to a task's support set (Finn et al.: 5 "
                                      "for 20-way Omniglot)", non_negative)
    maml_inner_lr: float = option(0.1, "alpha, step of the head's adaptation (Finn et al.: 0.1 for 20-way "
                                       "Omniglot)", positive)
    maml_first_order: bool = option(False, "first-order (FOMAML): d(w_K)/d(w) taken as identity")
