"""The attention head interface and its 1x1-convolution attention ``S = conv1x1(F)``.

Every head maps one backbone pass to class logit maps (:meth:`LCAMHead.class_maps`, all ``K``;
:meth:`LCAMHead.target_maps`, one class per image) and defines the training forward that feeds
the cross-entropy term (:meth:`LCAMHead.masked_logits`). The masking variants are in
:mod:`lcam.heads.conv`, the multi-layer TAME head in :mod:`lcam.heads.tame`.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor, nn

from lcam.backbone import BackboneOutput, FrozenBackbone

__all__ = ["LCAMHead"]


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
