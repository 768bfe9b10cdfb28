"""Tests for the procedural SyntheticShapes dataset."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from lcam.data.synthetic import SHAPE_NAMES, SyntheticShapes, export_images, main

S = 64


@pytest.fixture(scope="module")
def items():
    """The first 120 items of the default dataset (seed 0, 6 classes, 64 px)."""
    dataset = SyntheticShapes(120)
    return [dataset[i] for i in range(len(dataset))]


def _items_of(items, name):
    label = SHAPE_NAMES.index(name)
    found = [item for item in items if int(item["label"]) == label]
    assert len(found) >= 5, f"too few {name} items to test"
    return found


def _bbox(mask):
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def test_shape_names_and_class_names():
    assert SHAPE_NAMES == ("disc", "square", "triangle", "cross", "ring", "diamond")
    assert SyntheticShapes(1).class_names == SHAPE_NAMES
    assert SyntheticShapes(1, num_classes=3).class_names == ("disc", "square", "triangle")
    assert len(SyntheticShapes(17)) == 17


def test_same_seed_and_index_give_identical_items_regardless_of_access_order():
    a = SyntheticShapes(50, seed=3)
    b = SyntheticShapes(50, seed=3)
    _ = [a[i] for i in (7, 2, 40)]  # touch other items first
    for index in (0, 13, 49):
        x, y = a[index], b[index]
        assert torch.equal(x["image"], y["image"])
        assert torch.equal(x["mask"], y["mask"])
        assert torch.equal(x["label"], y["label"])
    # a dataset of another length does not change item i either
    assert torch.equal(SyntheticShapes(20, seed=3)[13]["image"], a[13]["image"])
    assert torch.equal(a[-1]["image"], a[49]["image"])


def test_different_index_or_seed_gives_different_items():
    a = SyntheticShapes(10, seed=0)
    b = SyntheticShapes(10, seed=1)
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["mask"], a[1]["mask"])
    assert not torch.equal(a[4]["image"], b[4]["image"])


def test_index_out_of_range():
    dataset = SyntheticShapes(5)
    with pytest.raises(IndexError):
        dataset[5]
    with pytest.raises(IndexError):
        dataset[-6]


def test_types_shapes_and_ranges(items):
    for item in items:
        image, label, mask = item["image"], item["label"], item["mask"]
        assert image.dtype == torch.float32 and image.shape == (3, S, S)
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
        assert label.dtype == torch.int64 and label.shape == ()
        assert 0 <= int(label) < len(SHAPE_NAMES)
        assert mask.dtype == torch.bool and mask.shape == (S, S)


def test_other_image_size():
    item = SyntheticShapes(2, image_size=32)[1]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)
    assert 0.04 <= item["mask"].float().mean() <= 0.30


def test_labels_cover_all_classes_roughly_uniformly(items):
    counts = torch.bincount(torch.stack([item["label"] for item in items]), minlength=6)
    assert counts.shape == (6,)
    assert int(counts.min()) >= 8  # expectation is 20 per class

    few = SyntheticShapes(60, num_classes=2)
    labels = torch.stack([few[i]["label"] for i in range(60)])
    assert set(labels.tolist()) == {0, 1}


@pytest.mark.parametrize("num_classes", [0, 7, -1])
def test_invalid_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapes(10, num_classes=num_classes)


def test_mask_area_and_object_fully_inside(items):
    for item in items:
        mask = item["mask"]
        area = float(mask.float().mean())
        assert 0.04 <= area <= 0.30
        top, bottom, left, right = _bbox(mask)
        height, width = bottom - top + 1, right - left + 1
        # every shape has a square bounding box of 30-50% of the side; a shape clipped by the
        # image border would have a shorter extent on one axis
        assert abs(height - width) <= 2
        assert 0.28 * S <= height <= 0.5 * S + 1
        # a single connected object: every row and column within the box is used
        assert bool(mask[top : bottom + 1].any(dim=1).all())
        assert bool(mask[:, left : right + 1].any(dim=0).all())


def test_object_is_one_solid_colour_distinct_from_background(items):
    for item in items:
        image, mask = item["image"], item["mask"]
        inside, outside = image[:, mask], image[:, ~mask]
        colour = inside.median(dim=1).values
        # only the mild pixel noise (std 0.03) varies inside the object
        assert float((inside - colour[:, None]).abs().max()) < 0.16
        assert float(inside.std(dim=1).max()) < 0.05
        assert float(outside.std(dim=1).max()) > 2 * float(inside.std(dim=1).max())
        # the object colour is not lost in the background underneath
        assert float((colour - outside.mean(dim=1)).norm()) > 0.1


def test_square_mask_is_a_filled_square(items):
    for item in _items_of(items, "square"):
        mask = item["mask"]
        top, bottom, left, right = _bbox(mask)
        assert bool(mask[top : bottom + 1, left : right + 1].all())
        assert int(mask.sum()) == (bottom - top + 1) * (right - left + 1)


def test_shape_specific_geometry(items):
    def centre_and_corners(mask):
        top, bottom, left, right = _bbox(mask)
        centre = bool(mask[(top + bottom) // 2, (left + right) // 2])
        corners = [mask[top, left], mask[top, right], mask[bottom, left], mask[bottom, right]]
        return centre, [bool(c) for c in corners]

    for name in ("disc", "cross", "diamond"):
        for item in _items_of(items, name):
            centre, corners = centre_and_corners(item["mask"])
            assert centre and not any(corners), name
    for item in _items_of(items, "ring"):
        centre, corners = centre_and_corners(item["mask"])
        assert not centre and not any(corners)  # hole in the middle
    for item in _items_of(items, "triangle"):
        mask = item["mask"]
        top, bottom, _, _ = _bbox(mask)
        # apex up: the top row is much narrower than the bottom row
        assert int(mask[top].sum()) * 4 < int(mask[bottom].sum())
    # shape areas relative to their bounding boxes differ as the geometry says
    ratios = {}
    for name in SHAPE_NAMES:
        values = []
        for item in _items_of(items, name):
            top, bottom, left, right = _bbox(item["mask"])
            values.append(float(item["mask"].sum()) / ((bottom - top + 1) * (right - left + 1)))
        ratios[name] = sum(values) / len(values)
    assert ratios["square"] == pytest.approx(1.0)
    assert ratios["disc"] == pytest.approx(np.pi / 4, abs=0.05)
    assert ratios["diamond"] == pytest.approx(0.5, abs=0.06)
    assert ratios["triangle"] == pytest.approx(0.5, abs=0.06)
    assert ratios["ring"] == pytest.approx(np.pi / 4 * (1 - 0.55**2), abs=0.06)
    assert ratios["cross"] == pytest.approx(0.51, abs=0.06)


def test_export_images(tmp_path):
    out = tmp_path / "new" / "dir"
    paths = export_images(out, 7, num_classes=4, image_size=32, seed=2)
    dataset = SyntheticShapes(7, num_classes=4, image_size=32, seed=2)
    assert len(paths) == 7
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in paths]
    for index, path in enumerate(paths):
        item = dataset[index]
        assert path.parent == out
        assert path.name == f"{index:04d}_{dataset.class_names[int(item['label'])]}.png"
        assert re.fullmatch(r"\d{4}_(disc|square|triangle|cross)\.png", path.name)
        with Image.open(path) as png:
            assert png.mode == "RGB" and png.size == (32, 32)
            pixels = torch.from_numpy(np.asarray(png).copy())
        expected = (item["image"] * 255).round().to(torch.uint8).permute(1, 2, 0)
        assert torch.equal(pixels, expected)


def test_command_line(tmp_path, capsys):
    main([str(tmp_path), "--count", "3", "--image-size", "24", "--seed", "5"])
    files = sorted(tmp_path.glob("*.png"))
    assert [f.name[:5] for f in files] == ["0000_", "0001_", "0002_"]
    with Image.open(files[0]) as png:
        assert png.size == (24, 24)
    assert "3 images" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--num-classes", "9"])
