"""A frozen classifier split at a target layer.

:class:`FrozenBackbone` wraps any image classifier (a torchvision model name, an importable
``nn.Module`` class path, or a module instance), freezes it, moves the input normalisation inside
it and splits its computation graph at a *target layer* with :mod:`torch.fx`::

    logits = tail(body(normalise(x)))        features = body(normalise(x))

so one pass yields the target-layer features ``F`` of shape ``(B, C, h, w)`` together with the
logits ``(B, K)``, and the forward can be *resumed* from a modified feature map (``tail(F * A)``)
without running any layer before the target layer again.

The package's files, lowest first: ``build`` (models and weights by name, class path or file),
``layers`` (default target layers), ``split`` (the torch.fx body/tail split) and ``frozen``
(:class:`FrozenBackbone`, the wrapper the heads and explainers use).
"""

from lcam.backbone.build import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WeightsUnavailableError,
    build_model,
    load_state_dict_file,
)
from lcam.backbone.frozen import BackboneOutput, FrozenBackbone
from lcam.backbone.layers import detect_target_layer, vit_encoder_layers
from lcam.backbone.split import add_into_first

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneOutput",
    "FrozenBackbone",
    "WeightsUnavailableError",
    "add_into_first",
    "build_model",
    "detect_target_layer",
    "load_state_dict_file",
    "vit_encoder_layers",
]
