"""Colour maps and overlays, in torch on the maps' device.

Two colour maps, both piecewise linear between anchor colours:

- ``"viridis"`` (default): perceptually uniform (matplotlib's viridis, 17 anchors): equal steps
  in the map are equal steps in perceived lightness, dark purple low, yellow high, and it reads
  the same in greyscale and for the common colour-vision deficiencies;
- ``"jet"``: the jet-like map of earlier versions (dark blue -> cyan -> yellow -> red), whose
  bright bands at 1/4 and 3/4 show edges that are not in the map.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["COLORMAPS", "Colormap", "apply_colormap", "overlay", "to_uint8"]

Colormap = Literal["viridis", "jet"]

# Anchor colours at evenly spaced positions from 0 to 1.
COLORMAPS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "viridis": (
        (0.2670, 0.0049, 0.3294),
        (0.2823, 0.0950, 0.4173),
        (0.2788, 0.1755, 0.4834),
        (0.2590, 0.2515, 0.5247),
        (0.2297, 0.3224, 0.5457),
        (0.1994, 0.3876, 0.5546),
        (0.1727, 0.4488, 0.5579),
        (0.1490, 0.5081, 0.5573),
        (0.1276, 0.5669, 0.5506),
        (0.1206, 0.6258, 0.5335),
        (0.1579, 0.6838, 0.5017),
        (0.2461, 0.7389, 0.4520),
        (0.3692, 0.7889, 0.3829),
        (0.5160, 0.8312, 0.2943),
        (0.6785, 0.8637, 0.1895),
        (0.8456, 0.8873, 0.0997),
        (0.9932, 0.9062, 0.1439),
    ),
    "jet": (
        (0.0, 0.0, 0.5),
        (0.0, 0.5, 1.0),
        (0.5, 1.0, 0.5),
        (1.0, 0.5, 0.0),
        (0.5, 0.0, 0.0),
    ),
}


def apply_colormap(maps: Tensor, colormap: Colormap = "viridis") -> Tensor:
    """Colour ``(B, H, W)`` maps in [0, 1] as ``(B, 3, H, W)`` RGB with ``colormap``.

    Raises:
        ValueError: an unknown colour map name.
    """
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}: use one of {', '.join(COLORMAPS)}")
    anchors = torch.tensor(COLORMAPS[colormap], dtype=maps.dtype, device=maps.device)
    position = maps.clamp(0, 1) * (len(anchors) - 1)
    lower = position.floor().long().clamp(max=len(anchors) - 2)
    fraction = (position - lower).unsqueeze(-1)
    colours = anchors[lower] * (1 - fraction) + anchors[lower + 1] * fraction
    return colours.permute(0, 3, 1, 2)


def overlay(
    images: Tensor, maps: Tensor, alpha: float = 0.5, colormap: Colormap = "viridis"
) -> Tensor:
    """Blend ``(B, H, W)`` maps coloured with ``colormap`` onto ``(B, 3, H, W)`` images in
    [0, 1]; returns ``(B, 3, H, W)``."""
    return (1 - alpha) * images + alpha * apply_colormap(maps, colormap).to(images.dtype)


def to_uint8(images: Tensor) -> Tensor:
    """``(..., 3, H, W)`` floats in [0, 1] -> ``(..., H, W, 3)`` uint8 on the CPU, for files."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu()
