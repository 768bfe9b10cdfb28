"""torchvision classifiers: building by name with torchvision weights, and what they say.

torchvision models carry little about themselves: ``VisionTransformer.image_size`` (the only size
a ViT accepts) and, through a weights entry, the class names and the preprocessing (crop size,
mean, std). Stage layers are given for the families whose stages are named modules.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models

from lcam.backbone.sources.description import ModelDescription
from lcam.backbone.sources.weights import (
    WeightsUnavailableError,
    is_weights_file,
    load_weights_into,
)

__all__ = ["build_torchvision", "describe_torchvision", "torchvision_weights"]


def torchvision_weights(name: str, weights: str) -> Any:
    """The torchvision weights entry ``weights`` (``"DEFAULT"``, ``"IMAGENET1K_V1"``, ...)."""
    try:
        weights_enum = models.get_model_weights(name)
    except ValueError as error:
        raise ValueError(f"torchvision has no weights for model {name!r}") from error
    member = weights.rpartition(".")[2]
    try:
        return weights_enum[member]
    except KeyError:
        known = ", ".join(["DEFAULT", *weights_enum.__members__])
        raise ValueError(
            f"unknown weights {weights!r} for {name!r}: expected a local state_dict file or one "
            f"of {known}"
        ) from None


def _stage_layers(network: nn.Module) -> list[str] | None:
    """Stage outputs of the families whose stages are named modules, shallow to deep."""
    if isinstance(network, models.ResNet):
        return ["layer1", "layer2", "layer3", "layer4"]
    if isinstance(network, models.VisionTransformer):
        return [f"encoder.layers.{name}" for name, _ in network.encoder.layers.named_children()]
    if isinstance(network, models.SwinTransformer | models.ConvNeXt):
        # features = [stem, stage, downsample, stage, downsample, stage, downsample, stage]
        return [f"features.{index}" for index in range(1, len(network.features), 2)]
    if isinstance(network, models.RegNet):
        return [f"trunk_output.{name}" for name, _ in network.trunk_output.named_children()]
    if isinstance(network, models.DenseNet):
        # The last dense block's output reaches the classifier through norm5 (then a ReLU).
        blocks = [name for name, _ in network.features.named_children() if "denseblock" in name]
        return [f"features.{name}" for name in blocks[:-1]] + ["features.norm5"]
    return None


def describe_torchvision(network: nn.Module) -> ModelDescription | None:
    """What a torchvision classifier instance says about itself; ``None`` if it is not one."""
    if not type(network).__module__.startswith("torchvision."):
        return None
    is_vit = isinstance(network, models.VisionTransformer)
    return ModelDescription(
        network=network,
        input_size=(network.image_size, network.image_size) if is_vit else None,
        stage_layers=_stage_layers(network),
        stage_channels=[network.hidden_dim] * len(network.encoder.layers) if is_vit else None,
        num_prefix_tokens=1 if is_vit else None,
        fixed_input_size=is_vit,  # its forward asserts the image size
    )


def build_torchvision(
    name: str, *, num_classes: int | None = None, weights: str | None = None
) -> tuple[ModelDescription, str | None]:
    """A torchvision classifier by name, randomly initialised or with torchvision weights.

    Returns:
        Its description (class names, crop size, mean and std from the weights entry when
        given) and the weights' identity string (``None`` for random init).
    """
    if name not in models.list_models():
        raise ValueError(
            f"unknown model {name!r}: not a torchvision model name, timm/<name>, hf/<folder> "
            "or a class path (package.module.Class)"
        )
    if weights is None or is_weights_file(weights):
        kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
        description = describe_torchvision(models.get_model(name, **kwargs))
        assert description is not None  # built by torchvision
        if weights is None:
            return description, None
        return description, load_weights_into(description.network, weights, name)
    entry = torchvision_weights(name, weights)
    categories = entry.meta.get("categories")
    if num_classes is not None and categories is not None and num_classes != len(categories):
        raise ValueError(
            f"weights {entry} have {len(categories)} classes but num_classes={num_classes}; "
            "train on top of them with their own classes or drop weights"
        )
    try:
        network = models.get_model(name, weights=entry)
    except (urllib.error.URLError, OSError) as error:
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsUnavailableError(
            f"cannot download torchvision weights {entry} for {name!r} ({error}). The machine "
            f"seems offline: fetch them once on a connected machine (torchvision caches them in "
            f"{cache}) or pass a local state_dict file as weights=PATH."
        ) from error
    description = describe_torchvision(network)
    assert description is not None
    description.class_names = list(categories) if categories else None
    preprocess = entry.transforms()
    if all(hasattr(preprocess, key) for key in ("crop_size", "mean", "std")):  # classification
        crop = preprocess.crop_size[0]
        description.input_size = description.input_size or (crop, crop)
        description.mean, description.std = tuple(preprocess.mean), tuple(preprocess.std)
    return description, str(entry)
