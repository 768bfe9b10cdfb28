r"""Integrated Gradients (Sundararajan et al., ICML 2017), batched over images and steps.

For the [0, 1] image ``x``, a baseline ``x'`` (default black, 0) and the pre-softmax logit
``y_c`` of the explained class,

.. math:: A = (x - x') \odot \int_0^1 \partial_x y_c\big(x' + \alpha (x - x')\big)\, d\alpha
          \approx (x - x') \odot \sum_{s=1}^{n} w_s\, \partial_x y_c\big(x' + \alpha_s (x - x')\big)

``(B, 3, H, W)``, with the quadrature nodes ``alpha_s`` and weights ``w_s`` of
:func:`quadrature` (captum's ``gausslegendre`` and ``riemann_*`` rules, same nodes and
weights). By completeness ``sum A ~ y_c(x) - y_c(x')``. The ``n * B`` path points are
differentiated together in chunks of ``batch_size``. Map: ``|sum_ch A|`` by default. Passes per
image: ``n + 1`` forwards (one clean), ``n`` backwards.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lcam.backbone import FrozenBackbone
from lcam.explainers.input_paths import ChannelReduction, InputAttribution, input_gradients
from lcam.explainers.registry import register_explainer

__all__ = ["IntegratedGradients", "Quadrature", "quadrature"]

Quadrature = Literal[
    "gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"
]


def quadrature(steps: int, method: Quadrature = "gausslegendre") -> tuple[Tensor, Tensor]:
    """Nodes ``alpha`` ``(n,)`` in [0, 1] and weights ``w`` ``(n,)`` (float64) of a rule.

    captum's rules, node for node: note that its ``riemann_trapezoid`` takes ``n`` nodes from 0 to
    1 with weights ``1/n`` (ends halved), which sum to ``1 - 1/n``, not 1; prefer
    ``gausslegendre`` (the default), exact for polynomials up to degree ``2n - 1``.
    """
    if method == "gausslegendre":
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy(0.5 * (1 + nodes)), torch.from_numpy(0.5 * weights)
    if steps < 2:
        raise ValueError(f"a Riemann rule needs steps >= 2, got {steps}")
    weights = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    starts = {
        "riemann_left": (0.0, 1 - 1 / steps),
        "riemann_right": (1 / steps, 1.0),
        "riemann_middle": (1 / (2 * steps), 1 - 1 / (2 * steps)),
        "riemann_trapezoid": (0.0, 1.0),
    }
    if method not in starts:
        raise ValueError(f"unknown quadrature {method!r}; choose gausslegendre or riemann_*")
    if method == "riemann_trapezoid":
        weights[[0, -1]] /= 2
    low, high = starts[method]
    # float32 linspace, as captum builds its nodes
    return torch.linspace(low, high, steps).double(), weights


@register_explainer("integrated_gradients")
class IntegratedGradients(InputAttribution):
    """Integrated Gradients (see the module doc).

    Args:
        backbone: the frozen classifier.
        steps: ``n``, the number of path points.
        method: the quadrature rule (see :func:`quadrature`).
        baseline: ``x'``: a number, or a ``(3, H, W)`` / ``(B, 3, H, W)`` image in [0, 1] scale.
        batch_size: most path points per forward/backward.
        reduce: colour reduction of the attributions (see
            :func:`~lcam.explainers.input_paths.reduce_channels`).
    """

    def __init__(
        self,
        backbone: FrozenBackbone,
        steps: int = 32,
        method: Quadrature = "gausslegendre",
        baseline: float | Tensor = 0.0,
        batch_size: int = 64,
        reduce: ChannelReduction = "abs_sum",
    ) -> None:
        super().__init__(backbone, batch_size=batch_size, reduce=reduce)
        self.alphas, self.weights = quadrature(steps, method)
        self.steps, self.method, self.baseline = steps, method, baseline
        self.points_per_image = float(steps)

    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        """``(B, 3, H, W)`` attributions of ``images`` to classes ``targets`` ``(B,)``."""
        baseline = torch.as_tensor(self.baseline, dtype=images.dtype, device=images.device)
        delta = images - baseline
        alphas = self.alphas.to(images.device, images.dtype)
        points = baseline + alphas[:, None, None, None, None] * delta  # (n, B, 3, H, W)
        grads = input_gradients(
            self.backbone, points.flatten(0, 1), targets.repeat(self.steps), self.batch_size
        ).view(points.shape)
        weights = self.weights.to(images.device, images.dtype)
        return delta * torch.einsum("n,nbchw->bchw", weights, grads)
