"""gessl as a library: the public pieces (``docs/api.md``).

- ``GeSSL``: the bi-level step around any ``nn.Module`` whose ``forward(batch)`` returns an
  ``SSLOutput``; ``PlainStep``: the base loss alone, with the same call;
- ``SSLOutput``: what such a model returns (the loss, its named terms, the two views' projections);
- ``BASE_METHODS``: the registry of the project's base methods (name → class);
- ``evaluate_backbone``: the universality suite on any feature extractor and the data sets named.

The command lines (``python -m gessl.train``, ``python -m gessl.evaluate``) are thin layers over them.
"""
from baselines import BASE_METHODS
from baselines.base import SSLOutput
from gessl.bilevel import GeSSL, PlainStep

__all__ = ["BASE_METHODS", "GeSSL", "PlainStep", "SSLOutput", "evaluate_backbone"]


def __getattr__(name):
    """``evaluate_backbone``, imported on first use: the evaluation modules are not loaded by ``import gessl``
    (nor before ``python -m gessl.evaluate`` runs its own module)."""
    if name == "evaluate_backbone":
        from gessl.backbone_eval import evaluate_backbone
        return evaluate_backbone
    raise AttributeError(f"module 'gessl' has no attribute {name!r}")
