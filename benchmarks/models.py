"""The benchmark models: how to build each one's ``FrozenBackbone`` and its images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from lcam.backbone import FrozenBackbone


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: how to build its ``FrozenBackbone``."""

    model: str
    input_size: int
    num_classes: int | None = None
    weights: str | None = None  # "shapes": the TinyResNet weights shipped with lcam
    large: bool = True  # 224 px ImageNet-size network: slow methods get --quick reductions

    def describe(self) -> str:
        weights = {None: "random weights", "shapes": "shipped weights"}.get(self.weights, "")
        return f"{self.model}, {self.input_size} px, {weights}"


MODELS: dict[str, ModelSpec] = {
    "quickstart": ModelSpec(
        "lcam.models.TinyResNet", 64, num_classes=6, weights="shapes", large=False
    ),
    "resnet50": ModelSpec("resnet50", 224),
    "vgg16": ModelSpec("vgg16", 224),
    "vit_b_16": ModelSpec("vit_b_16", 224),
}


def spec_weights(spec: ModelSpec) -> str | None:
    """The ``weights`` argument of ``FrozenBackbone`` for ``spec`` (a path or ``None``)."""
    if spec.weights == "shapes":
        from lcam.models.tiny import SHAPES_WEIGHTS

        return str(SHAPES_WEIGHTS)
    return spec.weights


def build_backbone(spec: ModelSpec) -> FrozenBackbone:
    """``spec``'s backbone, built after ``torch.manual_seed(0)`` (random weights repeat)."""
    import torch

    import lcam

    torch.manual_seed(0)
    return lcam.FrozenBackbone(
        spec.model,
        num_classes=spec.num_classes,
        weights=spec_weights(spec),
        input_size=spec.input_size,
    )


def make_images(spec: ModelSpec, count: int) -> tuple[Tensor, Tensor]:
    """``count`` synthetic-shapes images ``(count, 3, S, S)`` in [0, 1] at the model's size
    ``S`` and their labels ``(count,)`` (deterministic: seed 0)."""
    import torch

    from lcam.data import SyntheticShapes

    data = SyntheticShapes(count, image_size=spec.input_size, seed=0)
    items = [data[i] for i in range(count)]
    # The renderer returns channels-last strides; use the usual contiguous NCHW batch of a loader.
    images = torch.stack([i["image"] for i in items]).contiguous()
    return images, torch.stack([i["label"] for i in items])
