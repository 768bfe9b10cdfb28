"""Deprecated import path, kept for one release: use :mod:`lcam.training.losses`."""

from lcam.training.losses import (
    LCAMLoss,
    MapSelection,
    area_loss,
    select_maps,
    total_variation_loss,
)

__all__ = ["LCAMLoss", "MapSelection", "area_loss", "select_maps", "total_variation_loss"]
