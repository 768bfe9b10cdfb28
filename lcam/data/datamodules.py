"""LightningDataModules yielding dict batches: ``image`` (B, 3, H, W) in [0, 1], ``label`` (B,),
and ``mask`` (B, H, W) where the dataset has object masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets, transforms

from lcam.data.synthetic import SHAPE_NAMES, SyntheticShapes

__all__ = ["ImageFolderDataModule", "SyntheticShapesDataModule"]


class _DictDataset(Dataset):
    """Turns ``(image, label)`` pairs into ``{"image", "label"}`` dicts."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.dataset[index]
        return {
            "image": image,
            "label": torch.tensor(label, dtype=torch.long),
            "index": torch.tensor(index),
        }


class _LoaderMixin:
    batch_size: int
    num_workers: int
    pin_memory: bool | None

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=pin,
            persistent_workers=self.num_workers > 0,
        )


class ImageFolderDataModule(_LoaderMixin, LightningDataModule):
    """ImageNet-style folders (``root/<class>/<image>``) with the papers' transforms.

    Train: Resize(``resize_size``), RandomCrop(``image_size``), horizontal flip (or, with
    ``train_augment=False``, the eval transform). Eval: Resize(``resize_size``),
    CenterCrop(``image_size``). No normalisation: the backbone does it.

    Args:
        train_dir, val_dir, test_dir: class-per-subfolder roots (``test_dir`` defaults to val).
        image_size, resize_size: crop side and shorter-side resize (224, 256).
        train_augment: random crop and flip for training (off for a teacher cache).
        batch_size, num_workers: loader settings.
        pin_memory: ``None`` pins when CUDA is available.
    """

    def __init__(
        self,
        train_dir: str | None = None,
        val_dir: str | None = None,
        test_dir: str | None = None,
        image_size: int = 224,
        resize_size: int = 256,
        train_augment: bool = True,
        batch_size: int = 64,
        num_workers: int = 4,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        self.train_augment = train_augment
        self.train_dir, self.val_dir, self.test_dir = train_dir, val_dir, test_dir or val_dir
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.train_transform = transforms.Compose(
            [
                transforms.Resize(resize_size),
                transforms.RandomCrop(image_size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
            ]
        )
        self.eval_transform = transforms.Compose(
            [
                transforms.Resize(resize_size),
                transforms.CenterCrop(image_size),
                transforms.ToTensor(),
            ]
        )
        self.class_names: list[str] | None = None

    def _folder(self, directory: str | None, transform: Any, role: str) -> Dataset:
        if directory is None:
            raise ValueError(f"data.{role}_dir is not set")
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"data.{role}_dir {directory!r} is not a folder")
        folder = datasets.ImageFolder(directory, transform=transform, loader=_rgb_loader)
        self.class_names = list(folder.classes)
        return _DictDataset(folder)

    def train_dataloader(self) -> DataLoader:
        transform = self.train_transform if self.train_augment else self.eval_transform
        return self._loader(self._folder(self.train_dir, transform, "train"), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._folder(self.val_dir, self.eval_transform, "val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._folder(self.test_dir, self.eval_transform, "test"), shuffle=False)


def _rgb_loader(path: str) -> Image.Image:
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


class SyntheticShapesDataModule(_LoaderMixin, LightningDataModule):
    """The built-in procedural dataset (see :class:`lcam.data.synthetic.SyntheticShapes`).

    Train, validation and test sets are generated from seeds ``seed``, ``seed + 1`` and
    ``seed + 2``, so they never share an image. No files, no downloads.
    """

    def __init__(
        self,
        num_classes: int = 6,
        image_size: int = 64,
        train_size: int = 4096,
        val_size: int = 512,
        test_size: int = 512,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        self.num_classes, self.image_size, self.seed = num_classes, image_size, seed
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.class_names = list(SHAPE_NAMES[:num_classes])

    def dataset(self, split: str) -> SyntheticShapes:
        """The ``"train"``, ``"val"`` or ``"test"`` split."""
        offset = {"train": 0, "val": 1, "test": 2}[split]
        return SyntheticShapes(
            self.sizes[split],
            num_classes=self.num_classes,
            image_size=self.image_size,
            seed=self.seed + offset,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train"), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), shuffle=False)
