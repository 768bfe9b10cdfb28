"""L-CAM attention heads: a 1x1 convolution from target-layer features to K class maps.

Both variants share inference (one forward of the frozen network; all K maps are a by-product)
and differ only in the training forward that feeds the cross-entropy term:

- **L-CAM-Fm** multiplies the explained class's attention map into the features and resumes the
  network from the target layer: ``logits = tail(F * A[b, y_b])``.
- **L-CAM-Img** upsamples that map to the input size, multiplies it into the [0, 1] image and runs
  the whole frozen network again: ``logits = f(x * up(A[b, y_b]))``.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor, nn

from lcam.backbone import BackboneOutput, FrozenBackbone
from lcam.explainers.base import upsample_maps

__all__ = ["LCAMFmHead", "LCAMHead", "LCAMImgHead"]


class LCAMHead(nn.Module):
    """Attention mechanism ``S = conv1x1(F)``: ``(B, C, h, w)`` -> ``(B, K, h, w)`` logit maps.

    The attention maps are ``A = sigmoid(S)``.

    Args:
        in_channels: ``C``, channels of the target-layer features.
        num_classes: ``K``.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, kernel_size=1, bias=True)

    @classmethod
    def for_backbone(cls, backbone: FrozenBackbone) -> LCAMHead:
        """A head sized for ``backbone``'s target-layer channels and classes."""
        if len(backbone.target_layers) != 1:
            raise ValueError(
                f"{cls.__name__} reads one target layer; the backbone has "
                f"{list(backbone.target_layers)} (multi-layer heads: 'tame')"
            )
        return cls(backbone.feature_channels, backbone.num_classes)

    def forward(self, features: Tensor) -> Tensor:
        """Class logit maps ``S`` ``(B, K, h, w)`` of features ``(B, C, h, w)``."""
        return self.conv(features)

    def class_maps(self, output: BackboneOutput) -> Tensor:
        """Class logit maps ``S`` ``(B, K, h, w)`` from one backbone pass."""
        return self(output.layers[0])

    def target_maps(self, output: BackboneOutput, targets: Tensor) -> Tensor:
        """Logit maps ``S[b, targets[b]]`` ``(B, h, w)`` of one class per image, without
        computing the other ``K - 1``: the 1x1 convolution's row of each target only."""
        weight = self.conv.weight.flatten(1)[targets]  # (B, C)
        maps = torch.einsum("bchw,bc->bhw", output.layers[0], weight.to(output.layers[0].dtype))
        return maps + self.conv.bias[targets].view(-1, 1, 1)

    @abstractmethod
    def masked_logits(
        self, backbone: FrozenBackbone, images: Tensor, output: BackboneOutput, attention: Tensor
    ) -> Tensor:
        """Logits ``(B, K)`` of the input masked by ``attention`` ``(B, h, w)`` in [0, 1]."""


class LCAMFmHead(LCAMHead):
    """L-CAM-Fm: the attention map masks the features; only the tail runs again."""

    def masked_logits(
        self, backbone: FrozenBackbone, images: Tensor, output: BackboneOutput, attention: Tensor
    ) -> Tensor:
        return backbone.tail(backbone.mask_features(output.features, attention), output.skips)


class LCAMImgHead(LCAMHead):
    """L-CAM-Img: the upsampled attention map masks the [0, 1] image; the whole network runs."""

    def masked_logits(
        self, backbone: FrozenBackbone, images: Tensor, output: BackboneOutput, attention: Tensor
    ) -> Tensor:
        mask = upsample_maps(attention, tuple(images.shape[-2:]))
        return backbone(images * mask[:, None])
