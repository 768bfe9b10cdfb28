"""Finding target layers: the default layer of a model and the layers multi-layer heads read."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["detect_target_layer", "vit_encoder_layers"]

_POOLING_TYPES = (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
)


def detect_target_layer(model: nn.Module, example: Tensor) -> str:
    """Name of the last module whose output is a spatial map not produced by pooling.

    For VGG this is the ReLU after conv5_3 (``features.29`` in VGG-16), for ResNet ``layer4``.
    """
    names = {module: name for name, module in model.named_modules() if name}
    producer: dict[int, nn.Module] = {}
    outputs: list[Tensor] = []  # kept alive so that ids are not reused within the pass
    candidates: list[str] = []

    def record(module: nn.Module, _inputs: Any, output: Any) -> None:
        if not isinstance(output, Tensor):
            return
        outputs.append(output)
        producer.setdefault(id(output), module)
        spatial = output.dim() == 4 and output.shape[-1] > 1 and output.shape[-2] > 1
        if spatial and not isinstance(producer[id(output)], _POOLING_TYPES):
            candidates.append(names[module])

    handles = [module.register_forward_hook(record) for module in names]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    if not candidates:
        raise ValueError(
            "could not find a convolutional target layer automatically; pass target_layer= "
            "with a module name"
        )
    return candidates[-1]


def vit_encoder_layers(model: nn.Module, count: int) -> list[str]:
    """Names of the last ``count`` encoder layers of a torchvision ``VisionTransformer``."""
    names = [name for name, _ in model.encoder.layers.named_children()]
    return [f"encoder.layers.{name}" for name in names[-count:]]
