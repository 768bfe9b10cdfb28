"""Deprecated import path, kept for one release: use :mod:`lcam.training.distillation`."""

from lcam.training.distillation import CACHE_FORMAT, Distance, TeacherMaps, map_distance

__all__ = ["CACHE_FORMAT", "Distance", "TeacherMaps", "map_distance"]
