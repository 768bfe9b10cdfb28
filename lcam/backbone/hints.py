"""What FrozenBackbone reads from a model before probing it: its description, input size,
normalisation, patch size and prefix tokens.

Every value follows one precedence: an explicit argument, then the model's description
(:func:`lcam.backbone.build.describe_model`: timm ``pretrained_cfg``/``feature_info``, Hugging
Face configs, torchvision attributes), then what the module itself carries (torchvision
``VisionTransformer.image_size``, timm ``num_prefix_tokens``/``patch_embed``, a Hugging Face
``config``), then the defaults (224 px, ImageNet statistics).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torchvision
from torch import nn

from lcam.backbone.sources.description import IMAGENET_MEAN, IMAGENET_STD, ModelDescription

__all__ = ["ModelHints", "model_hints"]

DEFAULT_INPUT_SIZE = 224


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    height, width = (int(v) for v in value)
    return height, width


def _patch_size(network: nn.Module) -> int | None:
    candidates = [
        getattr(network, "patch_size", None),  # torchvision VisionTransformer
        getattr(getattr(network, "patch_embed", None), "patch_size", None),  # timm
        getattr(getattr(network, "config", None), "patch_size", None),  # Hugging Face
    ]
    for value in candidates:
        if isinstance(value, int):
            return value
        if isinstance(value, Sequence) and len(value) == 2 and value[0] == value[1]:
            return int(value[0])
    return None


def _size_value(value: object) -> tuple[int, int] | None:
    if isinstance(value, int) and value > 0:
        return value, value
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return _pair(value)  # type: ignore[arg-type]
    return None


def _own_input_size(network: nn.Module) -> tuple[int, int] | None:
    """The size the built module was made for: torchvision ViT ``image_size``, a timm patch
    embedding's or the model's own ``img_size`` (CrossViT)."""
    if isinstance(network, torchvision.models.VisionTransformer):
        return _pair(network.image_size)
    embed = getattr(network, "patch_embed", None)
    for value in (getattr(embed, "img_size", None), getattr(network, "img_size", None)):
        size = _size_value(value)
        if size is not None:
            return size
    return None


def _own_patch_grid(network: nn.Module) -> tuple[int, int] | None:
    """``(h, w)`` of the built patch embedding's grid (timm ``patch_embed.grid_size``)."""
    return _size_value(getattr(getattr(network, "patch_embed", None), "grid_size", None))


_PREFIX_PARAMETER = re.compile(r"(^|\.)(cls|class|dist|reg|register)_tokens?(_\d+)?$")


def _own_prefix_tokens(network: nn.Module) -> int | None:
    """Prefix tokens the module declares (timm ``num_prefix_tokens``, torchvision's class
    token) or, failing that, holds: learned class/distillation/register token parameters
    ``(1, n, C)`` (one per kind; a multi-branch model's ``cls_token_0``, ``cls_token_1`` count
    once). A timm module with none of them and no declaration has no prefix token (LeViT);
    for another module the count stays unknown (``None``)."""
    if isinstance(network, torchvision.models.VisionTransformer):
        return 1  # the class token
    value = getattr(network, "num_prefix_tokens", None)  # timm ViT/DeiT/EVA/BEiT
    if isinstance(value, int):
        return value
    kinds: dict[str, int] = {}
    for name, parameter in network.named_parameters():
        match = _PREFIX_PARAMETER.search(name)
        if match and parameter.dim() == 3:
            kind = name[: match.start(3)] if match.group(3) else name
            kinds[kind] = max(kinds.get(kind, 0), int(parameter.shape[1]))
    if kinds or type(network).__module__.startswith("timm."):  # timm names its token params so
        return sum(kinds.values())
    return None


@dataclass
class ModelHints:
    """Resolved input size ``(H, W)``, normalisation and token hints of one backbone."""

    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_prefix_tokens: int | None
    patch_size: int | None
    fixed_input_size: bool
    declared_prefix_tokens: int | None = None
    patch_grid: tuple[int, int] | None = None


def model_hints(
    description: ModelDescription,
    input_size: int | Sequence[int] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    num_prefix_tokens: int | None,
) -> ModelHints:
    """Explicit arguments, else the description, else the module's own attributes, else the
    defaults (see the module docstring)."""
    network = description.network
    built = _own_input_size(network)  # the built module's size beats its pretrained config
    size = input_size if input_size is not None else built or description.input_size
    declared = description.num_prefix_tokens
    declared = declared if declared is not None else _own_prefix_tokens(network)
    fixed = description.fixed_input_size or isinstance(
        network, torchvision.models.VisionTransformer
    )
    return ModelHints(
        input_size=_pair(size if size is not None else DEFAULT_INPUT_SIZE),
        mean=tuple(mean if mean is not None else description.mean or IMAGENET_MEAN),
        std=tuple(std if std is not None else description.std or IMAGENET_STD),
        num_prefix_tokens=num_prefix_tokens,
        patch_size=_patch_size(network),
        fixed_input_size=fixed,
        declared_prefix_tokens=declared,
        patch_grid=_own_patch_grid(network) if input_size is None or built == size else None,
    )
