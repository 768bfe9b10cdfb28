"""Building a classifier by name and describing what a classifier says about itself.

Models come from torchvision (``"resnet50"``), timm (``"timm/convnext_tiny"``), Hugging Face
folders (``"hf/path/to/folder"``) or class paths (``"package.module.Class"``); each source lives
in :mod:`lcam.backbone.sources`. Weights files are data: ``.safetensors`` or
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from torch import nn

from lcam.backbone.sources import hf_models, timm_models
from lcam.backbone.sources.description import IMAGENET_MEAN, IMAGENET_STD, ModelDescription
from lcam.backbone.sources.torchvision_models import build_torchvision, describe_torchvision
from lcam.backbone.sources.trust import (
    UntrustedModelError,
    check_model_trusted,
    is_trusted_model,
)
from lcam.backbone.sources.weights import (
    WeightsUnavailableError,
    is_weights_file,
    load_state_dict_file,
    load_weights_into,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelDescription",
    "UntrustedModelError",
    "WeightsUnavailableError",
    "build_model",
    "check_model_trusted",
    "describe_model",
    "is_trusted_model",
    "load_state_dict_file",
]


def _import_class(path: str) -> type[nn.Module]:
    module_name, _, class_name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"cannot import model class {path!r}: {error}") from error
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{path!r} is not an nn.Module class")
    return cls


def _accepts_keyword(cls: type[nn.Module], name: str) -> bool:
    """Whether ``cls(...)`` takes the keyword ``name`` (explicitly or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # no signature to read: pass it and let the call decide
        return True
    return any(
        (p.name == name and p.kind is not p.POSITIONAL_ONLY) or p.kind is p.VAR_KEYWORD
        for p in parameters
    )


def describe_model(network: nn.Module) -> ModelDescription:
    """What ``network`` says about itself (timm, Hugging Face and torchvision models).

    Hugging Face models come back wrapped (``description.network`` returns the logits tensor);
    any other module is described as itself with every field unknown.
    """
    if hf_models.is_hf_model(network):
        return hf_models.describe_hf(network)
    if timm_models.is_timm_model(network):
        return timm_models.describe_timm(network)
    return describe_torchvision(network) or ModelDescription(network=network)


def build_model(
    model: str, *, num_classes: int | None = None, weights: str | None = None
) -> tuple[ModelDescription, str | None]:
    """Build a classifier by name and describe it.

    Args:
        model: a torchvision model name (``"resnet50"``), ``"timm/<model name>"``,
            ``"hf/<save_pretrained folder>"`` or a class path (``"package.module.Class"``).
        num_classes: number of outputs; ``None`` keeps the model's default.
        weights: ``None`` (random init), a local state_dict file (``.safetensors``, ``.pt``,
            ``.pth``, ``.bin``), a torchvision weights name (``"IMAGENET1K_V1"``, ``"DEFAULT"``)
            or, for timm, ``"pretrained"`` or a pretrained tag.

    Returns:
        The model's description (network, input size, normalisation, class names, stage layers
        where the model says them) and an identity string for the weights (``None`` for
        random init).
    """
    if model.startswith(timm_models.PREFIX):
        return timm_models.build_timm(model, num_classes=num_classes, weights=weights)
    if model.startswith(hf_models.PREFIX):
        return hf_models.build_hf(model, num_classes=num_classes, weights=weights)
    if "." not in model:
        return build_torchvision(model, num_classes=num_classes, weights=weights)
    if weights is not None and not is_weights_file(weights):
        raise ValueError(
            f"weights {weights!r} must be a local state_dict file for model class {model!r}"
        )
    cls = _import_class(model)
    # A class without a num_classes argument (a wrapper of fixed pretrained weights) is built
    # as it is; FrozenBackbone then refuses it if its output count differs from num_classes.
    takes_count = num_classes is not None and _accepts_keyword(cls, "num_classes")
    kwargs: dict[str, Any] = {"num_classes": num_classes} if takes_count else {}
    description = describe_model(cls(**kwargs))
    if weights is None:
        return description, None
    return description, load_weights_into(description.network, weights, model)
