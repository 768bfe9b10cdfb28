"""Real-photo composites: masks are exactly the pasted pixels, items are deterministic."""

from __future__ import annotations

import pytest
import torch
from skimage import data as skdata

import lcam.data.composites as composites
from lcam.data.composites import (
    COMPOSITE_CLASSES,
    CROP_BOXES,
    CompositeImages,
    CompositesDataModule,
)

SIZE = 96


def test_items_are_shaped_like_the_other_datasets() -> None:
    dataset = CompositeImages(24, image_size=SIZE, seed=3)
    labels = []
    for index in range(len(dataset)):
        item = dataset[index]
        assert set(item) == {"image", "label", "mask", "index"}
        assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
        assert 0 <= item["image"].min() and item["image"].max() <= 1
        assert item["mask"].shape == (SIZE, SIZE) and item["mask"].dtype == torch.bool
        assert item["label"].dtype == torch.int64 and item["index"].item() == index
        # the object's longer side spans 35-70 % of the image; the ellipse covers pi/4 of its box
        share = item["mask"].float().mean().item()
        assert 0.35**2 * 0.5 < share < 0.7**2 * 0.8
        labels.append(int(item["label"]))
    assert set(labels) == {0, 1}
    assert dataset.class_names == COMPOSITE_CLASSES == ("cat", "coffee")
    with pytest.raises(IndexError):
        dataset[24]


def test_deterministic_by_seed_and_index() -> None:
    first, again = (
        CompositeImages(6, image_size=SIZE, seed=5),
        CompositeImages(6, image_size=SIZE, seed=5),
    )
    for index in range(6):
        a, b = first[index], again[index]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    other = CompositeImages(6, image_size=SIZE, seed=6)
    assert not torch.equal(first[0]["image"], other[0]["image"])
    assert not torch.equal(first[0]["image"], first[1]["image"])
    assert torch.equal(first[-1]["image"], first[5]["image"])


@pytest.mark.parametrize("placement", ["inside", "uniform"])
def test_mask_is_exactly_the_pasted_pixels(monkeypatch: pytest.MonkeyPatch, placement: str) -> None:
    """Render each item with the object replaced by all-black and by all-white photos of the same
    size: the same random draws give the same geometry, so the pixels that differ are the pasted
    ones, and they must be the mask."""
    real = {name: composites.object_photo(name) for name in COMPOSITE_CLASSES}
    dataset = CompositeImages(16, image_size=SIZE, seed=0, placement=placement)

    def render(value: float) -> list[dict[str, torch.Tensor]]:
        monkeypatch.setattr(
            composites, "object_photo", lambda name: torch.full_like(real[name], value)
        )
        return [dataset[index] for index in range(len(dataset))]

    black, white = render(0.0), render(1.0)
    for dark, light in zip(black, white, strict=True):
        assert torch.equal(dark["mask"], light["mask"])
        pasted = (light["image"] - dark["image"]).abs().amax(0) > 0.5
        assert torch.equal(pasted, dark["mask"])
        assert (dark["image"][:, dark["mask"]] == 0).all()


def test_crop_boxes_lie_inside_the_photos() -> None:
    for name, photo in (("cat", skdata.chelsea()), ("coffee", skdata.coffee())):
        left, top, right, bottom = CROP_BOXES[name]
        assert 0 <= left < right <= photo.shape[1] and 0 <= top < bottom <= photo.shape[0]
        crop = composites.object_photo(name)
        assert crop.shape == (3, bottom - top, right - left)


def test_datamodule_batches() -> None:
    module = CompositesDataModule(image_size=64, test_size=8, batch_size=4, seed=1)
    batch = next(iter(module.test_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 64, 64)
    assert module.class_names == ["cat", "coffee"]
    test_first = module.dataset("test")[0]["image"]
    assert not torch.equal(module.dataset("train")[0]["image"], test_first)


def test_uniform_placement_does_not_favour_the_centre() -> None:
    """Object pixels per image pixel, in the central quarter of the image against the whole
    image: with objects kept inside the image they pile up in the centre (measured 2.4x at
    64 px); with centres uniform over the image, cut by the border, far less (1.3x)."""

    def centre_lean(placement: str) -> float:
        dataset = CompositeImages(200, image_size=64, seed=7, placement=placement)
        density = torch.stack([dataset[i]["mask"] for i in range(len(dataset))]).float().mean(0)
        return float(density[16:48, 16:48].mean() / density.mean())

    inside, uniform = centre_lean("inside"), centre_lean("uniform")
    assert inside > 2.0 and uniform < 1.5, (inside, uniform)
    dataset = CompositeImages(50, image_size=64, seed=7, placement="uniform")
    assert all(dataset[i]["mask"].any() for i in range(len(dataset)))  # never fully cut off
    with pytest.raises(ValueError, match="placement"):
        CompositeImages(4, placement="centre")
    assert CompositesDataModule(placement="uniform").dataset("test").placement == "uniform"
