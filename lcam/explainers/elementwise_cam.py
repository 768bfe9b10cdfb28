r"""CAMs that weight every feature *element*, not every channel: LayerCAM and HiResCAM.

With the target-layer features ``F`` and the gradient ``g = dy_c / dF`` (both ``(B, C, h, w)``,
``y_c`` the pre-softmax logit of the explained class), the map of image ``b`` is

.. math:: M_b = \mathrm{ReLU}\Big(\sum_k W_{bkij}\, F_{bkij}\Big) \qquad (h \times w)

with an element-wise weight ``W`` instead of Grad-CAM's channel weight ``mean_ij g_kij``:

* **LayerCAM** (Jiang et al., IEEE TIP 2021): ``W = ReLU(g)``;
* **HiResCAM** (Draelos & Carin, 2020): ``W = g``; its map is exactly the gradient-times-feature
  contribution of each position, the faithful form of Grad-CAM.

Both come from one :func:`~lcam.explainers.features.feature_pass` (1 forward, 1 backward
through the tail only), so they work on every layout the backbone converts to a grid (maps,
channels-last maps, tokens) and on both backbone paths. They equal pytorch-grad-cam's
``LayerCAM`` and ``HiResCAM``.
"""

from __future__ import annotations

from abc import abstractmethod

from torch import Tensor

from lcam.backbone import FrozenBackbone
from lcam.explainers.base import Explainer, Targets
from lcam.explainers.features import feature_pass
from lcam.explainers.registry import register_explainer

__all__ = ["ElementwiseCAM", "HiResCAM", "LayerCAM"]


class ElementwiseCAM(Explainer):
    """Base of the CAMs whose map is ``ReLU(sum_k W_k * F_k)`` with an element-wise ``W``.

    A variant implements :meth:`element_weights`. Passes per image: 1 forward, 1 backward (the
    backward runs through the layers after the target layer only).

    Args:
        backbone: the frozen classifier.
        relu: keep only the positive evidence (``True``, the published definitions).
    """

    forward_passes = 1.0
    backward_passes = 1.0

    def __init__(self, backbone: FrozenBackbone, relu: bool = True) -> None:
        super().__init__(backbone)
        self.relu = relu

    @abstractmethod
    def element_weights(self, gradients: Tensor) -> Tensor:
        """Element weights ``W`` ``(B, C, h, w)`` from the gradients ``g`` ``(B, C, h, w)``."""

    def maps_from(self, features: Tensor, gradients: Tensor) -> Tensor:
        """Raw maps ``(B, h, w)`` from ``F`` and ``g`` ``(B, C, h, w)``."""
        maps = (self.element_weights(gradients) * features).sum(dim=1)
        return maps.relu() if self.relu else maps

    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        """Raw maps ``(B, h, w)`` at the feature resolution, logits ``(B, K)``, targets ``(B,)``."""
        result = feature_pass(self.backbone, images, targets)
        assert result.gradients is not None
        return self.maps_from(result.features, result.gradients), result.logits, result.targets


@register_explainer("layercam")
class LayerCAM(ElementwiseCAM):
    r"""LayerCAM: every feature element weighted by its positive gradient.

    .. math:: M = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}(g_k) \odot F_k\Big)

    Passes per image: 1 forward, 1 backward (tail only).
    """

    def element_weights(self, gradients: Tensor) -> Tensor:
        return gradients.clamp_min(0)


@register_explainer("hirescam")
class HiResCAM(ElementwiseCAM):
    r"""HiResCAM: every feature element weighted by its gradient (no spatial averaging).

    .. math:: M = \mathrm{ReLU}\Big(\sum_k g_k \odot F_k\Big)

    Passes per image: 1 forward, 1 backward (tail only).
    """

    def element_weights(self, gradients: Tensor) -> Tensor:
        return gradients
