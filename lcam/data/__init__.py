"""Datasets and datamodules."""

from lcam.data.datamodules import ImageFolderDataModule, SyntheticShapesDataModule
from lcam.data.synthetic import SHAPE_NAMES, SyntheticShapes

__all__ = ["SHAPE_NAMES", "ImageFolderDataModule", "SyntheticShapes", "SyntheticShapesDataModule"]
