"""What FrozenBackbone reads from a model before probing it: its description, input size,
normalisation, patch size and prefix tokens.

Every value follows one precedence: an explicit argument, then the model's description
(:func:`lcam.backbone.build.describe_model`: timm ``pretrained_cfg``/``feature_info``, Hugging
Face configs, torchvision attributes), then what the module itself carries (torchvision
``VisionTransformer.image_size``, timm ``num_prefix_tokens``/``patch_embed``, a Hugging Face
``config``), then the defaults (224 px, ImageNet statistics).
"""

from __future__ import annotations

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


def _own_input_size(network: nn.Module) -> tuple[int, int] | None:
    if isinstance(network, torchvision.models.VisionTransformer):
        return _pair(network.image_size)
    size = getattr(getattr(network, "patch_embed", None), "img_size", None)  # timm ViT
    return _pair(size) if isinstance(size, int | Sequence) and size else None


def _own_prefix_tokens(network: nn.Module) -> int | None:
    if isinstance(network, torchvision.models.VisionTransformer):
        return 1  # the class token
    value = getattr(network, "num_prefix_tokens", None)  # timm ViT/DeiT/EVA/BEiT
    return value if isinstance(value, int) else None


@dataclass
class ModelHints:
    """Resolved input size ``(H, W)``, normalisation and token hints of one backbone."""

    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_prefix_tokens: int | None
    patch_size: int | None
    fixed_input_size: bool


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
    size = input_size if input_size is not None else description.input_size
    size = size if size is not None else _own_input_size(network)
    prefix = num_prefix_tokens if num_prefix_tokens is not None else description.num_prefix_tokens
    fixed = description.fixed_input_size or isinstance(
        network, torchvision.models.VisionTransformer
    )
    return ModelHints(
        input_size=_pair(size if size is not None else DEFAULT_INPUT_SIZE),
        mean=tuple(mean if mean is not None else description.mean or IMAGENET_MEAN),
        std=tuple(std if std is not None else description.std or IMAGENET_STD),
        num_prefix_tokens=prefix if prefix is not None else _own_prefix_tokens(network),
        patch_size=_patch_size(network),
        fixed_input_size=fixed,
    )
