"""What the input-attribution methods share: batched gradients at many points, channel reduction.

Integrated Gradients, GradientSHAP and SmoothGrad all differentiate the explained logit at many
points near the image (on a path from a baseline, or with noise added). :func:`input_gradients`
evaluates ``dy_c / dx`` at ``N`` points in chunks of ``batch_size`` (one forward and one
backward per chunk, through the whole network, on both backbone paths), and
:class:`InputAttribution` is the base of those methods: one clean forward for the logits and
the explained classes, the method's :meth:`InputAttribution.attribute` for the ``(B, 3, H, W)``
attributions, and their reduction over the colour channels to a map.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Literal

import torch
from torch import Tensor

from lcam.backbone import FrozenBackbone
from lcam.explainers.base import Explainer, Targets, resolve_targets
from lcam.explainers.features import autograd_enabled

__all__ = ["ChannelReduction", "InputAttribution", "input_gradients", "reduce_channels"]

ChannelReduction = Literal["abs_sum", "abs_max", "sum"]


def reduce_channels(attributions: Tensor, how: ChannelReduction) -> Tensor:
    """``(B, 3, H, W)`` attributions -> ``(B, H, W)`` maps.

    ``abs_sum``: ``|sum_ch A|``; ``abs_max``: ``max_ch |A|``; ``sum``: ``sum_ch A`` (signed).
    """
    if how == "abs_sum":
        return attributions.sum(dim=1).abs()
    if how == "abs_max":
        return attributions.abs().amax(dim=1)
    if how == "sum":
        return attributions.sum(dim=1)
    raise ValueError(f"unknown channel reduction {how!r}; choose abs_sum, abs_max or sum")


def input_gradients(
    backbone: FrozenBackbone, points: Tensor, targets: Tensor, batch_size: int
) -> Tensor:
    """``dy_{t_n} / dx`` at ``points`` ``(N, 3, H, W)`` for classes ``targets`` ``(N,)``.

    ``x`` is the [0, 1]-scale input (normalisation happens inside the backbone); points may lie
    outside [0, 1] (noise). Runs ``ceil(N / batch_size)`` forward + backward passes.

    Returns:
        ``(N, 3, H, W)`` gradients (detached).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = []
    with autograd_enabled():
        for start in range(0, len(points), batch_size):
            chunk = points[start : start + batch_size].detach().clone().requires_grad_(True)
            logits = backbone(chunk)
            chosen = targets[start : start + batch_size, None].clone()
            (grad,) = torch.autograd.grad(logits.gather(1, chosen).sum(), chunk)
            chunks.append(grad)
    return torch.cat(chunks)


class InputAttribution(Explainer):
    """Base of the methods that attribute to the input pixels from many gradient evaluations.

    A method implements :meth:`attribute` and sets :attr:`points_per_image` (gradient
    evaluations per image). Passes per image: ``1 + points_per_image`` forwards (the clean one
    gives the logits and the predicted classes), ``points_per_image`` backwards.

    Args:
        backbone: the frozen classifier.
        batch_size: most points per forward/backward (the points of all images and all
            steps/samples are batched together, chunked to this size).
        reduce: colour reduction of the attributions to the map (see :func:`reduce_channels`).
    """

    points_per_image: float = 1.0

    def __init__(
        self, backbone: FrozenBackbone, batch_size: int = 64, reduce: ChannelReduction = "abs_sum"
    ) -> None:
        super().__init__(backbone)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        reduce_channels(torch.zeros(1, 3, 1, 1), reduce)  # fail early on a bad name
        self.batch_size = batch_size
        self.reduce: ChannelReduction = reduce

    @property
    def forward_passes(self) -> float:  # type: ignore[override]
        return 1.0 + self.points_per_image

    @property
    def backward_passes(self) -> float:  # type: ignore[override]
        return self.points_per_image

    @abstractmethod
    def attribute(self, images: Tensor, targets: Tensor) -> Tensor:
        """Attributions ``(B, 3, H, W)`` of ``images`` ``(B, 3, H, W)`` to classes ``(B,)``
        (resolved already; no clean forward)."""

    def attributions(
        self, images: Tensor, targets: Targets = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Attributions ``(B, 3, H, W)``, clean logits ``(B, K)`` and explained classes ``(B,)``."""
        with torch.no_grad():
            logits = self.backbone(images)
        resolved = resolve_targets(logits, targets)
        return self.attribute(images, resolved), logits, resolved

    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        attributions, logits, resolved = self.attributions(images, targets)
        return reduce_channels(attributions, self.reduce), logits, resolved
