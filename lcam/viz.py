"""Colour maps and overlays, in torch on the maps' device."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["apply_colormap", "overlay", "to_uint8"]

# Anchor colours of a jet-like map at 0, 1/4, 1/2, 3/4, 1 (dark blue -> cyan -> yellow -> red).
_ANCHORS = (
    (0.0, 0.0, 0.5),
    (0.0, 0.5, 1.0),
    (0.5, 1.0, 0.5),
    (1.0, 0.5, 0.0),
    (0.5, 0.0, 0.0),
)


def apply_colormap(maps: Tensor) -> Tensor:
    """Colour ``(B, H, W)`` maps in [0, 1] as ``(B, 3, H, W)`` RGB (blue low, red high)."""
    anchors = torch.tensor(_ANCHORS, dtype=maps.dtype, device=maps.device)
    position = maps.clamp(0, 1) * (len(_ANCHORS) - 1)
    lower = position.floor().long().clamp(max=len(_ANCHORS) - 2)
    fraction = (position - lower).unsqueeze(-1)
    colours = anchors[lower] * (1 - fraction) + anchors[lower + 1] * fraction
    return colours.permute(0, 3, 1, 2)


def overlay(images: Tensor, maps: Tensor, alpha: float = 0.5) -> Tensor:
    """Blend coloured ``(B, H, W)`` maps onto ``(B, 3, H, W)`` images in [0, 1]."""
    return (1 - alpha) * images + alpha * apply_colormap(maps).to(images.dtype)


def to_uint8(images: Tensor) -> Tensor:
    """``(..., 3, H, W)`` floats in [0, 1] -> ``(..., H, W, 3)`` uint8 on the CPU, for files."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu()
