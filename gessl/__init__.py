"""gessl as a library: the public pieces (``docs/api.md``).

- ``GeSSL``: the bi-level step around any ``nn.Module`` whose ``forward(batch)`` returns an
  ``SSLOutput``; ``PlainStep``: the base loss alone, with the same call;
- ``SSLOutput``: what such a model returns (the loss, its named terms, the two views' projections);
- ``BASE_METHODS``: the registry of the project's base methods (name → class);
- ``evaluate_backbone``: the universality suite on any feature extractor and the data sets named;
- ``resolve_config``, ``build_model``, ``training_batches``: the checked options, the model and the
  training batches of a ``python -m gessl.train`` run, for measuring or reusing what the CLI trains;
  ``config_from_flags``: those options from the CLI's own flags;
- ``paired_differences``, ``random_differences``: two scored run folders compared on the episodes
  both were scored on, and a run against its random backbone; ``EPISODE_FIELDS``: the parts of an
  ``episodes.npz`` entry's key.

The command lines (``python -m gessl.train``, ``python -m gessl.evaluate``) are thin layers over them.
Each name is imported on first use, so that ``import gessl`` loads nothing else, ``baselines`` (some
of whose methods use ``gessl.backbones``) can be imported first, and ``python -m gessl.evaluate``
runs its module once.
"""
import importlib

PUBLIC = {"GeSSL": "gessl.bilevel", "PlainStep": "gessl.bilevel", "SSLOutput": "baselines.base",
          "BASE_METHODS": "baselines", "evaluate_backbone": "gessl.backbone_eval",
          "resolve_config": "gessl.config", "build_model": "gessl.train",
          "training_batches": "gessl.bn_stats", "config_from_flags": "gessl.train",
          "paired_differences": "gessl.evaluate", "random_differences": "gessl.evaluate",
          "EPISODE_FIELDS": "gessl.evaluate"}  # name -> its module
__all__ = sorted(PUBLIC)


def __getattr__(name):
    if name in PUBLIC:
        return getattr(importlib.import_module(PUBLIC[name]), name)
    raise AttributeError(f"module 'gessl' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(PUBLIC))
