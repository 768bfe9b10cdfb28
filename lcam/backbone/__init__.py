"""A frozen classifier split at a target layer (layer 1: imports only lcam's leaf modules).

:class:`FrozenBackbone` wraps any image classifier (a torchvision, timm or Hugging Face model, an
importable ``nn.Module`` class path, or a module instance), freezes it, moves the input
normalisation inside it and splits its computation graph at a *target layer* with
:mod:`torch.fx`::

    logits = tail(body(normalise(x)))        features = body(normalise(x))

so one pass yields the target-layer features ``F`` together with the logits ``(B, K)``, and the
forward can be *resumed* from a modified feature map (``tail(F * A)``) without running any layer
before the target layer again. Features keep the layer's own layout (``(B, C, h, w)``,
channels-last ``(B, h, w, C)`` or tokens ``(B, N, C)``); ``grid()`` gives ``(B, C, h, w)``.

The package's files, lowest first: ``sources``/``build`` (models, weights and what a model says
about itself), ``targets`` (module, call-site ``"module#k"`` and fx node targets), ``layout``
(feature layouts and their inference), ``layers`` (default target and multi-layer stages),
``hints`` (input size, normalisation and token hints of a model), ``split`` (the torch.fx
body/tail split), ``fallback`` (the hook split for models fx cannot trace) and ``frozen``
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
from lcam.backbone.layers import default_layers, detect_target_layer, vit_encoder_layers
from lcam.backbone.layout import Layout
from lcam.backbone.split import add_into_first

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneOutput",
    "FrozenBackbone",
    "Layout",
    "WeightsUnavailableError",
    "add_into_first",
    "build_model",
    "default_layers",
    "detect_target_layer",
    "load_state_dict_file",
    "vit_encoder_layers",
]
