"""Datasets and datamodules (layer 1: depends only on the leaf helpers ``lcam.maps``/``lcam._io``).

``datamodules`` (ImageNet-style folders, the built-in shapes), ``synthetic`` (procedural shapes
with masks), ``composites`` (real photos pasted on textures, with masks), ``photos`` (the
catalogue of those photos), ``loaders`` (seeded, resumable loaders).
"""

from lcam.data.composites import CompositeImages, CompositesDataModule
from lcam.data.datamodules import ImageFolderDataModule, SyntheticShapesDataModule
from lcam.data.photos import CATALOGUES, Catalogue, Photo
from lcam.data.synthetic import SHAPE_NAMES, SyntheticShapes

__all__ = [
    "CATALOGUES",
    "SHAPE_NAMES",
    "Catalogue",
    "CompositeImages",
    "CompositesDataModule",
    "ImageFolderDataModule",
    "Photo",
    "SyntheticShapes",
    "SyntheticShapesDataModule",
]
