"""What a classifier says about itself, in one record every source fills in."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ModelDescription"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelDescription:
    """A classifier and what it says about itself; ``None`` wherever it does not say.

    Attributes:
        network: the module to run; maps ``(B, 3, H, W)`` normalised images to ``(B, K)``
            logits (Hugging Face models are wrapped so that they do).
        input_size: ``(H, W)`` the model was built or trained for.
        mean, std: per-channel normalisation the model was trained with.
        class_names: names of the ``K`` classes.
        stage_layers: module names (in ``network``) of the stage outputs, shallow to deep.
        stage_channels: channels of each stage output, aligned with ``stage_layers``.
        num_prefix_tokens: class/distillation/register tokens in front of the patch tokens of a
            token sequence ``(B, N, C)``; ``0`` for token models without any.
        fixed_input_size: ``True`` when the model cannot run at another input size.
    """

    network: nn.Module
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: list[str] | None = None
    stage_layers: list[str] | None = None
    stage_channels: list[int] | None = None
    num_prefix_tokens: int | None = None
    fixed_input_size: bool = False
