"""L-CAM heads: the 1x1-convolution attention of :mod:`lcam.heads.base`, two training forwards.

Both variants share inference (one forward of the frozen network; all K maps are a by-product)
and differ only in the training forward that feeds the cross-entropy term:

- **L-CAM-Fm** multiplies the explained class's attention map into the features and resumes the
  network from the target layer: ``logits = tail(F * A[b, y_b])``.
- **L-CAM-Img** upsamples that map to the input size, multiplies it into the [0, 1] image and runs
  the whole frozen network again: ``logits = f(x * up(A[b, y_b]))``.
"""

from __future__ import annotations

from torch import Tensor

from lcam.backbone import BackboneOutput, FrozenBackbone
from lcam.heads.base import LCAMHead
from lcam.maps import upsample_maps

__all__ = ["LCAMFmHead", "LCAMImgHead"]


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
