"""Real-photo composites: object photos of :mod:`lcam.data.photos` pasted onto textures.

Each item is rendered from ``(seed, index)`` alone: one photo of a catalogue
(:data:`~lcam.data.photos.CATALOGUES`; the default ``"cat_coffee"``: class 0 ``cat``, the face of
``skimage.data.chelsea()``, class 1 ``coffee``, the cup of ``skimage.data.coffee()``; or the
eight-photo ``"diverse"`` set), drawn uniformly among the catalogue's photos, cut out as the
catalogue says (the ellipse inscribed in its crop box, or the whole box), resized to a random
scale and pasted at a random place (:data:`PLACEMENTS`) onto a background that is a random
window of a scikit-image texture (``grass``, ``gravel``, ``brick``, tinted with a random
colour), a smooth colour noise field or a linear colour gradient. The object mask is exactly the
set of pasted pixels. The label is the photo's class in the catalogue.

The photos, their crop boxes and the ImageNet classes that fit them are in
:mod:`lcam.data.photos`; :data:`COMPOSITE_CLASSES`, :data:`CROP_BOXES` and
:data:`IMAGENET_CLASSES` here are those of the default catalogue.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from skimage import data as skdata
from torch import Tensor
from torch.utils.data import Dataset

from lcam.data.datamodules import SyntheticShapesDataModule
from lcam.data.photos import Catalogue, as_image, catalogue, object_photo

__all__ = [
    "COMPOSITE_CLASSES",
    "CROP_BOXES",
    "IMAGENET_CLASSES",
    "PLACEMENTS",
    "CompositeImages",
    "CompositesDataModule",
    "object_photo",
    "render_composite",
]

_DEFAULT = catalogue("cat_coffee")

COMPOSITE_CLASSES: tuple[str, ...] = _DEFAULT.classes
"""Class names of the default catalogue in label order."""

CROP_BOXES: dict[str, tuple[int, int, int, int]] = {p.name: p.box for p in _DEFAULT.photos}
"""``(left, top, right, bottom)`` object boxes in ``chelsea()`` and ``coffee()``."""

IMAGENET_CLASSES: dict[str, tuple[int, ...]] = _DEFAULT.imagenet
"""ImageNet-1k indices of each class of the default catalogue (torchvision's category order)."""

PLACEMENTS: tuple[str, ...] = ("inside", "uniform")
"""Where objects go. ``"inside"`` (the default, which the documented composite numbers used):
the whole object box inside the image, its top-left corner uniform over the valid range, so
object centres lie in the middle ``1 - scale`` of each side and object pixels lean to the image
centre (a centre prior scores well). ``"uniform"``: the object's *centre* uniform over the
whole image, the object cut by the border where it overhangs (the mask holds only the visible
pixels), so no position is favoured and a centre prior gains little."""

_TEXTURES = ("grass", "gravel", "brick")
_SEED_STRIDE = 1_000_003


@functools.cache
def _texture(name: str) -> Tensor:
    return as_image(getattr(skdata, name)()).contiguous()


def _check_placement(placement: str) -> None:
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")


def _ellipse(height: int, width: int) -> Tensor:
    """``(height, width)`` bool: pixel centres inside the inscribed ellipse."""
    v = (torch.arange(height) + 0.5) / height * 2 - 1
    u = (torch.arange(width) + 0.5) / width * 2 - 1
    return v[:, None] ** 2 + u[None, :] ** 2 <= 1


def _background(g: torch.Generator, size: int) -> Tensor:
    """A ``(3, size, size)`` background: tinted texture window, colour noise or gradient."""
    kind = int(torch.randint(3, (), generator=g))
    if kind == 0:
        texture = _texture(_TEXTURES[int(torch.randint(len(_TEXTURES), (), generator=g))])
        side = int(torch.randint(size, texture.shape[-1] + 1, (), generator=g))
        top, left = (
            int(torch.randint(texture.shape[-1] - side + 1, (), generator=g)) for _ in "tl"
        )
        window = texture[None, :, top : top + side, left : left + side]
        window = F.interpolate(window, size=(size, size), mode="bilinear", antialias=True)[0]
        tint = 0.4 + 0.6 * torch.rand(3, 1, 1, generator=g)
        return window * tint
    if kind == 1:
        coarse = 0.15 + 0.7 * torch.rand(1, 3, 5, 5, generator=g)
        return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]
    ends = torch.rand(2, 3, 1, 1, generator=g)
    angle = float(torch.rand((), generator=g)) * 2 * math.pi
    ramp = torch.linspace(0, 1, size)
    t = math.cos(angle) * ramp[None, :] + math.sin(angle) * ramp[:, None]
    t = (t - t.min()) / (t.max() - t.min())
    return ends[0] + (ends[1] - ends[0]) * t


def _draw_photo(g: torch.Generator, chosen: Catalogue) -> int:
    """Which photo of ``chosen`` an item shows: the first draw of its generator, so labels are
    known without rendering (for the two-photo default this is the draw of the label that the
    documented composites were rendered with, so they stay the same images)."""
    return int(torch.randint(len(chosen.photos), (), generator=g))


def render_composite(
    g: torch.Generator,
    size: int,
    placement: str = "inside",
    photos: str | Catalogue = "cat_coffee",
) -> dict[str, Tensor]:
    """One composite ``{"image": (3, S, S) in [0, 1], "label": (), "mask": (S, S) bool}`` of a
    photo of the catalogue ``photos``, the object placed as ``placement`` says
    (:data:`PLACEMENTS`)."""
    chosen = catalogue(photos)
    pick = _draw_photo(g, chosen)
    photo = object_photo(chosen.photos[pick].name)
    low, high = chosen.scale
    scale = low + (high - low) * float(torch.rand((), generator=g))
    ratio = size * scale / max(photo.shape[-2:])
    height, width = (max(2, round(side * ratio)) for side in photo.shape[-2:])
    pasted = F.interpolate(photo[None], size=(height, width), mode="bilinear", antialias=True)[0]
    if placement == "inside":
        top = int(torch.randint(size - height + 1, (), generator=g))
        left = int(torch.randint(size - width + 1, (), generator=g))
    else:  # the centre uniform over the image's pixels; the box may overhang the border
        top = int(torch.randint(size, (), generator=g)) - height // 2
        left = int(torch.randint(size, (), generator=g)) - width // 2
    if chosen.cutout == "ellipse":
        inside = _ellipse(height, width)
    else:
        inside = torch.ones(height, width, dtype=torch.bool)
    image = _background(g, size).clamp_(0, 1)
    # The part of the object box that lies on the image, in image and in object coordinates.
    rows = slice(max(top, 0), min(top + height, size))
    cols = slice(max(left, 0), min(left + width, size))
    cut = (slice(rows.start - top, rows.stop - top), slice(cols.start - left, cols.stop - left))
    window = image[:, rows, cols]
    window.copy_(torch.where(inside[cut], pasted.clamp(0, 1)[(slice(None), *cut)], window))
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[rows, cols] = inside[cut]
    label = torch.tensor(chosen.labels[pick])
    return {"image": image.contiguous(), "label": label, "mask": mask}


class CompositeImages(Dataset):
    """Deterministic dataset of composites (see the module docstring).

    Args:
        size: number of items.
        image_size: side of the square images.
        seed: items are rendered from ``seed * 1_000_003 + index``.
        placement: ``"inside"`` or ``"uniform"`` (:data:`PLACEMENTS`).
        photos: a catalogue name (``"cat_coffee"``, the default, or ``"diverse"``) or a
            :class:`~lcam.data.photos.Catalogue`; ``class_names`` are its classes.
    """

    def __init__(
        self,
        size: int,
        *,
        image_size: int = 224,
        seed: int = 0,
        placement: str = "inside",
        photos: str | Catalogue = "cat_coffee",
    ) -> None:
        _check_placement(placement)
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        self.size, self.image_size, self.seed = int(size), int(image_size), int(seed)
        self.placement = placement
        self.catalogue = catalogue(photos)
        self.class_names = self.catalogue.classes

    @property
    def targets(self) -> list[int]:
        """Every item's label, in index order, without rendering (torchvision's ``targets``: the
        class-stratified validation subset reads it)."""
        seeds = (self.seed * _SEED_STRIDE + index for index in range(self.size))
        picks = (_draw_photo(torch.Generator().manual_seed(seed), self.catalogue) for seed in seeds)
        return [self.catalogue.labels[pick] for pick in picks]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """Render item ``index`` (negative counts from the end): ``image``, ``label``, ``mask``,
        ``index``."""
        index = range(self.size)[int(index)]  # IndexError outside the dataset
        g = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + index)
        item = render_composite(g, self.image_size, self.placement, self.catalogue)
        return {**item, "index": torch.tensor(index)}


class CompositesDataModule(SyntheticShapesDataModule):
    """Train, validation and test composites from seeds ``seed``, ``seed + 1``, ``seed + 2``.

    Batches are dicts like the other datamodules': ``image`` ``(B, 3, S, S)`` in [0, 1], ``label``
    ``(B,)`` (the photo's class in the catalogue ``photos``; default 0 cat, 1 coffee), ``mask``
    ``(B, S, S)`` bool, ``index`` ``(B,)``. ``placement`` (:data:`PLACEMENTS`) applies to every
    split. ``held_out_photos`` (photo names; none by default, so every split uses every photo)
    are left out of the train and validation splits only, so the test split also shows photos
    the head never trained on; the class list stays the catalogue's.
    """

    def __init__(
        self,
        image_size: int = 224,
        train_size: int = 2048,
        val_size: int = 256,
        test_size: int = 256,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool | None = None,
        placement: str = "inside",
        photos: str = "cat_coffee",
        held_out_photos: Sequence[str] = (),
    ) -> None:
        _check_placement(placement)
        chosen = catalogue(photos)
        # Built now, so a misspelt photo or a catalogue emptied by the hold-out fails here.
        self.training_catalogue = chosen.without(held_out_photos) if held_out_photos else chosen
        super().__init__(
            num_classes=len(chosen.classes),
            image_size=image_size,
            train_size=train_size,
            val_size=val_size,
            test_size=test_size,
            seed=seed,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        self.class_names = list(chosen.classes)
        self.placement, self.catalogue = placement, chosen

    def dataset(self, split: str) -> CompositeImages:  # type: ignore[override]
        """The ``"train"``, ``"val"`` or ``"test"`` split."""
        offset = {"train": 0, "val": 1, "test": 2}[split]
        return CompositeImages(
            self.sizes[split],
            image_size=self.image_size,
            seed=self.seed + offset,
            placement=self.placement,
            photos=self.catalogue if split == "test" else self.training_catalogue,
        )
