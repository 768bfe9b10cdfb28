"""LightningDataModules yielding dict batches: ``image`` (B, 3, H, W) in [0, 1], ``label`` (B,),
and ``mask`` (B, H, W) where the dataset has object masks."""

from __future__ import annotations

import json
import posixpath
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision import datasets, transforms

from lcam.data.loaders import ResumableLoader, SeededSampler
from lcam.data.synthetic import SHAPE_NAMES, SyntheticShapes
from lcam.images import UnreadableImageError, open_rgb
from lcam.maps import boxes_to_masks

__all__ = ["ImageFolderDataModule", "SyntheticShapesDataModule", "collate_readable"]


def collate_readable(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate dataset items, skipping (with a warning naming the file) those whose image file is
    unreadable (items ``{"unreadable": reason}``): the batch holds the readable ones only.

    Raises:
        RuntimeError: when no image of the batch is readable (an empty batch cannot be trained
            or scored, and under DDP the other processes would wait for this one).
    """
    readable = [item for item in items if "unreadable" not in item]
    for item in items:
        if "unreadable" in item:
            warnings.warn(f"skipping an image file: {item['unreadable']}", stacklevel=2)
    if not readable:
        reasons = "; ".join(item["unreadable"] for item in items[:3])
        raise RuntimeError(f"no image of a batch of {len(items)} is readable: {reasons}")
    return default_collate(readable)


class _DictDataset(Dataset):
    """Turns ``(image, label)`` pairs into ``{"image", "label", "index"}`` dicts, and an
    unreadable image file into ``{"unreadable": reason}`` (see :func:`collate_readable`)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image, label = self.dataset[index]
        except UnreadableImageError as error:
            return {"unreadable": str(error)}
        return {
            "image": image,
            "label": torch.tensor(label, dtype=torch.long),
            "index": torch.tensor(index),
        }


Boxes = Mapping[str, Sequence[Sequence[float]]]


def _relative_key(path: str) -> str:
    """Normalised POSIX form of a relative image path (``./a\\b.png`` -> ``a/b.png``)."""
    return posixpath.normpath(path.strip().replace("\\", "/"))


def read_image_list(path: str | Path) -> list[str]:
    """Relative image paths of a list file: one per line; blank lines and ``#`` comments skipped.

    Raises:
        ValueError: when a path is listed twice.
    """
    entries: list[str] = []
    seen: set[str] = set()
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key = _relative_key(line)
        if key in seen:
            raise ValueError(f"{str(path)!r} line {number}: {line!r} is listed twice")
        seen.add(key)
        entries.append(key)
    return entries


def read_boxes(path: str | Path) -> dict[str, list[list[float]]]:
    """Boxes file: ``{relative_image_path: [[x0, y0, x1, y1], ...]}`` (JSON), keys normalised."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"boxes file {str(path)!r} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"boxes file {str(path)!r} must hold an object {{image path: boxes}}")
    boxes: dict[str, list[list[float]]] = {}
    for key, value in data.items():
        entries = [[float(v) for v in box] for box in value]
        if any(len(box) != 4 for box in entries):
            raise ValueError(f"boxes of {key!r} in {str(path)!r} must be [x0, y0, x1, y1] lists")
        boxes[_relative_key(key)] = entries
    return boxes


class _EvalFolderDataset(Dataset):
    """An ImageFolder split restricted to a list of images, with object masks from side data.

    Items are ``{"image", "label", "index"}`` plus ``"mask"`` (bool ``(S, S)``) when a mask
    source is given, or ``{"unreadable": reason}`` for an unreadable image file. The mask gets
    the image's geometry: the eval transform's resize and centre crop with nearest-neighbour
    interpolation.
    """

    def __init__(
        self,
        folder: datasets.ImageFolder,
        transform: Callable[[Image.Image], torch.Tensor],
        mask_transform: Callable[[Image.Image], Image.Image],
        masks_dir: str | None,
        boxes: Boxes | None,
        image_list: Sequence[str] | None,
    ) -> None:
        self.root = Path(folder.root)
        self.classes = list(folder.classes)
        samples = [(Path(path), label) for path, label in folder.samples]
        if image_list is not None:
            by_key = {self._key(path): (path, label) for path, label in samples}
            missing = [entry for entry in image_list if entry not in by_key]
            if missing:
                shown = ", ".join(repr(m) for m in missing[:5])
                raise FileNotFoundError(
                    f"{len(missing)} listed images are not in {str(self.root)!r} (paths are "
                    f"relative to it, e.g. class/image.JPEG): {shown}"
                )
            samples = [by_key[entry] for entry in image_list]
        self.samples = samples
        self.transform, self.mask_transform = transform, mask_transform
        self.masks_dir = Path(masks_dir) if masks_dir is not None else None
        self.boxes = boxes
        self.with_masks = masks_dir is not None or boxes is not None

    def _key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def __len__(self) -> int:
        return len(self.samples)

    def _mask(self, path: Path, label: int, size: tuple[int, int]) -> Image.Image:
        """Object mask ``"L"`` (255 = object) of an image at its loaded ``size`` (W, H)."""
        if self.masks_dir is not None:
            mask_path = self.masks_dir / self.classes[label] / f"{path.stem}.png"
            if mask_path.is_file():
                with Image.open(mask_path) as mask_file:
                    mask = np.asarray(mask_file.convert("L")) > 0
                image = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
                return image if image.size == size else image.resize(size, Image.NEAREST)
        key = self._key(path)
        if self.boxes is not None and key in self.boxes:
            width, height = size
            boxes = torch.tensor(self.boxes[key], dtype=torch.float32).reshape(-1, 4)
            mask = boxes_to_masks(boxes, (height, width)).any(dim=0).numpy()
            return Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
        sources = []
        if self.masks_dir is not None:
            sources.append(f"no {self.masks_dir / self.classes[label] / (path.stem + '.png')}")
        if self.boxes is not None:
            sources.append(f"no {key!r} in the boxes file")
        raise FileNotFoundError(f"no object mask for {str(path)!r}: {'; '.join(sources)}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        try:
            image = open_rgb(path)
        except UnreadableImageError as error:
            return {"unreadable": str(error)}
        item = {
            "image": self.transform(image),
            "label": torch.tensor(label, dtype=torch.long),
            "index": torch.tensor(index),
        }
        if self.with_masks:
            mask = self.mask_transform(self._mask(path, label, image.size))
            item["mask"] = torch.from_numpy(np.asarray(mask) > 0)
        return item


class _LoaderMixin:
    batch_size: int
    num_workers: int
    pin_memory: bool | None
    seed: int
    trainer: Any

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        """Evaluation loaders: plain, in dataset order."""
        return DataLoader(dataset, shuffle=shuffle, **self._loader_options())

    def _training_loader(self, dataset: Dataset) -> ResumableLoader:
        """Shuffled from (seed, epoch) only, sharded over DDP ranks, resumable mid-epoch."""
        trainer = self.trainer
        sampler = SeededSampler(
            dataset,
            shuffle=True,
            seed=self.seed,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
        )
        return ResumableLoader(dataset, sampler, **self._loader_options())

    def _loader_options(self) -> dict[str, Any]:
        pin = torch.cuda.is_available() if self.pin_memory is None else self.pin_memory
        return {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "pin_memory": pin,
            "persistent_workers": self.num_workers > 0,
            "collate_fn": collate_readable,
        }


class ImageFolderDataModule(_LoaderMixin, LightningDataModule):
    """ImageNet-style folders (``root/<class>/<image>``) with the papers' transforms.

    Train: Resize(``resize_size``), RandomCrop(``image_size``), horizontal flip (or, with
    ``train_augment=False``, the eval transform). Eval: Resize(``resize_size``),
    CenterCrop(``image_size``). No normalisation: the backbone does it. Files are decoded as
    ``infer.py`` decodes them (:func:`lcam.images.open_rgb`: EXIF rotation, 16-bit scaled by the
    format's range, transparency on black); files with other extensions are ignored (torchvision's
    ``ImageFolder``), and an image file that cannot be read is skipped with a warning naming it.

    Args:
        train_dir, val_dir, test_dir: class-per-subfolder roots (``test_dir`` defaults to val).
        image_size, resize_size: crop side and shorter-side resize (224, 256).
        train_augment: random crop and flip for training (off for a teacher cache).
        batch_size, num_workers: loader settings.
        pin_memory: ``None`` pins when CUDA is available.
        seed: seed of the training order (a function of seed and epoch only).
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
        masks_dir: str | None = None,
        boxes_file: str | None = None,
        test_list: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.seed = seed
        for option, value in (("masks_dir", masks_dir), ("boxes_file", boxes_file)):
            if value is not None and not Path(value).exists():
                raise FileNotFoundError(f"data.{option} {value!r} does not exist")
        if test_list is not None and not Path(test_list).is_file():
            raise FileNotFoundError(f"data.test_list {test_list!r} is not a file")
        self.masks_dir, self.boxes_file, self.test_list = masks_dir, boxes_file, test_list
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
        # The eval geometry for masks: nearest neighbour, no tensor conversion.
        self.mask_transform = transforms.Compose(
            [
                transforms.Resize(resize_size, interpolation=transforms.InterpolationMode.NEAREST),
                transforms.CenterCrop(image_size),
            ]
        )
        self.class_names: list[str] | None = None
        self._boxes: dict[str, list[list[float]]] | None = None

    def setup(self, stage: str) -> None:
        """Record the class folder names (sorted, as ``ImageFolder`` numbers them) before the
        model's ``setup``, which keeps them in the head's checkpoint when the backbone's weights
        name no classes: ``infer.py``, the report and the overlays then use them."""
        for directory in (self.train_dir, self.val_dir, self.test_dir):
            if directory is not None and Path(directory).is_dir():
                self.class_names = list(datasets.folder.find_classes(directory)[0])
                return

    def _folder(self, directory: str | None, transform: Any, role: str) -> Dataset:
        if directory is None:
            raise ValueError(f"data.{role}_dir is not set")
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"data.{role}_dir {directory!r} is not a folder")
        folder = datasets.ImageFolder(directory, transform=transform, loader=open_rgb)
        self.class_names = list(folder.classes)
        image_list = read_image_list(self.test_list) if role == "test" and self.test_list else None
        side_data = self.masks_dir is not None or self.boxes_file is not None
        if role == "train" or (not side_data and image_list is None):
            return _DictDataset(folder)
        if self.boxes_file is not None and self._boxes is None:
            self._boxes = read_boxes(self.boxes_file)
        return _EvalFolderDataset(
            folder, transform, self.mask_transform, self.masks_dir, self._boxes, image_list
        )

    def train_dataloader(self) -> DataLoader:
        transform = self.train_transform if self.train_augment else self.eval_transform
        return self._training_loader(self._folder(self.train_dir, transform, "train"))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._folder(self.val_dir, self.eval_transform, "val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._folder(self.test_dir, self.eval_transform, "test"), shuffle=False)


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
        return self._training_loader(self.dataset("train"))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), shuffle=False)
