"""Deprecated import path, kept for one release: use :func:`lcam.maps.in_mask_energy`."""

from __future__ import annotations

from lcam.maps import in_mask_energy

__all__ = ["in_mask_energy"]
