"""Localisation of maps against object masks."""

from __future__ import annotations

from torch import Tensor

__all__ = ["in_mask_energy"]


def in_mask_energy(maps: Tensor, masks: Tensor, eps: float = 1e-12) -> Tensor:
    """Share of each map's total mass inside its object mask.

    Args:
        maps: ``(B, H, W)`` non-negative maps.
        masks: ``(B, H, W)`` boolean or {0, 1} object masks.

    Returns:
        ``(B,)`` values in [0, 1]; compare with ``masks.float().mean((1, 2))``, the share a
        uniform map would get.
    """
    inside = (maps * masks.to(maps.dtype)).flatten(1).sum(1)
    return inside / maps.flatten(1).sum(1).clamp_min(eps)
