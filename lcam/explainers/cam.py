r"""Class activation maps that weight the target-layer channels: CAM and the gradient CAMs.

Every method here produces, for the class ``c_b`` of image ``b``, the map

.. math:: M_b = \mathrm{ReLU}\Big(\sum_k w_{bk} F_{bk}\Big) \qquad (h \times w)

from the target-layer features ``F`` ``(B, C, h, w)``, and differs only in the channel weights
``w`` ``(B, C)`` (:meth:`ChannelWeightCAM.channel_weights`):

* **CAM** (Zhou et al., CVPR 2016): the row of the final linear layer, ``w_k = W[c, k]``;
* **Grad-CAM** (Selvaraju et al., ICCV 2017): ``w_k = mean_ij g_kij`` with ``g = dy_c / dF``;
* **Grad-CAM++** (Chattopadhyay et al., WACV 2018): ``w_k = sum_ij alpha_kij ReLU(g_kij)``;
* **XGrad-CAM** (Fu et al., BMVC 2020): ``w_k = sum_ij F_kij g_kij / sum_ij F_kij``.

``y_c`` is the pre-softmax logit. The features and gradients come from one
:func:`~lcam.explainers.features.feature_pass` (the fast path: the backward runs through the
tail only); :meth:`ChannelWeightCAM.compute_maps_full_backward` gives the same maps by
backpropagating through the whole network from the image, as most libraries do.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn

from lcam.backbone import FrozenBackbone
from lcam.explainers.base import Explainer, Targets
from lcam.explainers.cam_tail import linear_after_global_pool
from lcam.explainers.features import (
    FeaturePass,
    autograd_enabled,
    capture_output,
    feature_pass,
    weighted_channel_sum,
)
from lcam.explainers.registry import register_explainer

__all__ = [
    "CAM",
    "ChannelWeightCAM",
    "FeaturePass",
    "GradientCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "XGradCAM",
    "autograd_enabled",
    "capture_output",
    "feature_pass",
    "linear_after_global_pool",
    "weighted_channel_sum",
]


class ChannelWeightCAM(Explainer):
    """Base of the CAMs whose map is ``ReLU(sum_k w_k F_k)`` ``(B, h, w)``.

    It runs the pass (:func:`feature_pass`, whose only hook, in the full-backward check, is
    always removed) and combines the channels; a variant only implements
    :meth:`channel_weights`.

    Args:
        backbone: the frozen classifier.
        relu: keep only the positive evidence (``True``, the published definition); ``False``
            returns the signed weighted sum.
    """

    forward_passes = 1.0
    needs_gradients: ClassVar[bool] = True

    def __init__(self, backbone: FrozenBackbone, relu: bool = True) -> None:
        # At a default layer the class evidence does not reach (a class-token ViT's last
        # block) the gradient CAMs take the input of the last attention instead.
        super().__init__(backbone.gradient_view() if self.needs_gradients else backbone)
        self.relu = relu
        # one feature_pass: one forward, and one backward (through the tail) for gradients
        self.backward_passes = float(self.needs_gradients)

    @abstractmethod
    def channel_weights(
        self, features: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        """Channel weights ``w`` ``(B, C)``.

        Args:
            features: ``F`` ``(B, C, h, w)``.
            gradients: ``dy_c / dF`` ``(B, C, h, w)``, ``None`` when ``needs_gradients`` is off.
            targets: explained classes ``(B,)``.
        """

    def maps_from(self, features: Tensor, gradients: Tensor | None, targets: Tensor) -> Tensor:
        """Raw maps ``ReLU(sum_k w_k F_k)`` ``(B, h, w)`` at the feature resolution."""
        weights = self.channel_weights(features, gradients, targets)
        return weighted_channel_sum(weights, features, relu=self.relu)

    def _maps(
        self, images: Tensor, targets: Targets, full_backward: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        result = feature_pass(
            self.backbone,
            images,
            targets,
            gradients=self.needs_gradients,
            full_backward=full_backward,
        )
        maps = self.maps_from(result.features, result.gradients, result.targets)
        return maps, result.logits, result.targets

    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        """Fast path: raw maps ``(B, h, w)``, logits ``(B, K)`` and targets ``(B,)``."""
        return self._maps(images, targets, full_backward=False)

    def compute_maps_full_backward(
        self, images: Tensor, targets: Targets
    ) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`compute_maps`, with the backward through the whole network from the image."""
        return self._maps(images, targets, full_backward=True)


class GradientCAM(ChannelWeightCAM):
    """A :class:`ChannelWeightCAM` whose weights are a function of ``F`` and ``g = dy_c / dF``;
    a variant implements :meth:`gradient_weights`."""

    def channel_weights(
        self, features: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        if gradients is None:
            raise ValueError(f"{self.name} needs the gradients dy_c / dF")
        return self.gradient_weights(features, gradients)

    @abstractmethod
    def gradient_weights(self, features: Tensor, gradients: Tensor) -> Tensor:
        """Channel weights ``(B, C)`` from ``F`` and ``g`` ``(B, C, h, w)``."""


@register_explainer("gradcam")
class GradCAM(GradientCAM):
    r"""Grad-CAM: channels weighted by their spatially averaged gradient.

    .. math:: w_k = \frac{1}{hw} \sum_{ij} \frac{\partial y_c}{\partial F_{kij}}, \qquad
              M = \mathrm{ReLU}\Big(\sum_k w_k F_k\Big)

    with ``y_c`` the pre-softmax logit. Passes per image: 1 forward, 1 backward (tail only).
    """

    def gradient_weights(self, features: Tensor, gradients: Tensor) -> Tensor:
        return gradients.mean(dim=(2, 3))


@register_explainer("gradcampp")
class GradCAMPlusPlus(GradientCAM):
    r"""Grad-CAM++: positive gradients weighted by a closed-form second-order coefficient.

    With the score ``Y = exp(y_c)`` the second and third derivatives are powers of the first,
    which gives, with ``g = dy_c / dF`` ``(B, C, h, w)``,

    .. math:: \alpha_{kij} = \frac{g_{kij}^2}{2 g_{kij}^2 + \sum_{ab} F_{kab}\, g_{kij}^3
              + \epsilon}, \qquad w_k = \sum_{ij} \alpha_{kij}\, \mathrm{ReLU}(g_{kij})

    and ``alpha = 0`` where ``g = 0``. The factor ``exp(y_c)`` of ``dY/dF`` is dropped: it is
    one positive number per image, which min-max normalisation removes. This is the definition
    of grad-cam's ``GradCAMPlusPlus`` (``eps = 1e-6``). Passes: 1 forward, 1 backward.

    Args:
        backbone: the frozen classifier.
        relu: see :class:`ChannelWeightCAM`.
        eps: added to the denominator of ``alpha``.
    """

    def __init__(self, backbone: FrozenBackbone, relu: bool = True, eps: float = 1e-6) -> None:
        super().__init__(backbone, relu=relu)
        self.eps = eps

    def gradient_weights(self, features: Tensor, gradients: Tensor) -> Tensor:
        squared = gradients.square()
        channel_sums = features.sum(dim=(2, 3), keepdim=True)
        alpha = squared / (2 * squared + channel_sums * squared * gradients + self.eps)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (alpha * gradients.clamp_min(0)).sum(dim=(2, 3))


@register_explainer("xgradcam")
class XGradCAM(GradientCAM):
    r"""XGrad-CAM: gradients averaged with the channel's own activations as weights.

    .. math:: w_k = \frac{\sum_{ij} F_{kij}\, g_{kij}}{\sum_{ij} F_{kij} + \epsilon}

    with ``g = dy_c / dF``. Passes: 1 forward, 1 backward.

    Args:
        backbone: the frozen classifier.
        relu: see :class:`ChannelWeightCAM`.
        eps: added to the channel sums (grad-cam's ``XGradCAM`` uses 1e-7).
    """

    def __init__(self, backbone: FrozenBackbone, relu: bool = True, eps: float = 1e-7) -> None:
        super().__init__(backbone, relu=relu)
        self.eps = eps

    def gradient_weights(self, features: Tensor, gradients: Tensor) -> Tensor:
        weighted = (features * gradients).sum(dim=(2, 3))
        return weighted / (features.sum(dim=(2, 3)) + self.eps)


@register_explainer("cam")
class CAM(ChannelWeightCAM):
    r"""CAM: channels weighted by the final linear layer's row of the explained class.

    .. math:: M = \mathrm{ReLU}\Big(\sum_k W_{ck} F_k\Big)

    Only defined when the tail is global average pooling followed by one linear layer
    ``y = W \bar F + b`` (ResNets at ``layer4``); then ``dy_c / dF_kij = W_ck / (hw)`` and CAM is
    exactly ``hw`` times Grad-CAM. The original CAM has no ReLU; it is applied by default for
    consistency with Grad-CAM (negative evidence is dropped; ``relu=False`` keeps it). The bias
    is not part of the map. Passes per image: 1 forward, no backward.

    Args:
        backbone: the frozen classifier.
        relu: see :class:`ChannelWeightCAM`.

    Raises:
        ValueError: when the layers after the target layer are not global pooling + one linear.
    """

    needs_gradients = False

    def __init__(self, backbone: FrozenBackbone, relu: bool = True) -> None:
        super().__init__(backbone, relu=relu)
        self.linear_name = linear_after_global_pool(backbone)
        linear = backbone.model.get_submodule(self.linear_name)
        if not isinstance(linear, nn.Linear) or linear.in_features != backbone.feature_channels:
            raise ValueError(
                f"CAM needs a linear layer over the {backbone.feature_channels} feature channels; "
                f"{self.linear_name!r} is {linear}"
            )

    def channel_weights(
        self, features: Tensor, gradients: Tensor | None, targets: Tensor
    ) -> Tensor:
        linear = self.backbone.model.get_submodule(self.linear_name)
        return linear.weight[targets].to(features.dtype)
