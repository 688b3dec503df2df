"""What every base method returns, so training loops and GeSSL can treat methods alike."""
import inspect
from dataclasses import dataclass, field

import torch


@dataclass
class SSLOutput:
    """The result of a base method's ``forward(backbone, batch)``.

    ``loss`` is the total to minimise; ``terms`` the named scalar terms that make it up (logged);
    ``projections`` the projector output of each view ([B, D] per view, in ``batch["views"]``
    order), from which GeSSL builds its instance-discrimination posteriors and DSA its relations;
    ``codes`` the soft assignments of each view to prototypes ([B, K] per view) for the methods that
    assign codes (SwAV), for the collapse diagnostics (``gessl.collapse``).
    """

    loss: torch.Tensor
    terms: dict = field(default_factory=dict)
    projections: tuple = ()
    codes: tuple = ()


def project_views(backbone, projector, batch):
    """The projections (z¹, z²) of the two views in ``batch["views"]``, through one backbone pass."""
    return projector(backbone(torch.cat(batch["views"]))).chunk(2)


def heads_alone_refusal(method_cls):
    """Why GeSSL cannot adapt the method's heads alone on backbone features (``inner_params="head"``),
    or ``None``: its constructor takes ``backbone``, which it copies into an encoder of its own (a
    momentum encoder: MoCo, BYOL, PsCo) that reads the images themselves; or it has no parameters
    outside the backbone (class attribute ``has_heads = False``: ProtoNet)."""
    if "backbone" in inspect.signature(method_cls).parameters:
        return "it runs its own copy of the backbone (a momentum encoder) on the images"
    if not getattr(method_cls, "has_heads", True):
        return "it has no parameters outside the backbone"
    return None
