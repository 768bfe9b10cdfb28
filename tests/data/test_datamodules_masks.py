from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lcam.data import ImageFolderDataModule

# Originals are 64 x 48 (W x H); Resize(24) halves them to 32 x 24, CenterCrop(24) drops 4
# columns on each side. The object occupies rows 8..31 and columns 16..47 of the original, so
# rows 4..15 and columns 8..23 after resizing, columns 4..19 after cropping.
EXPECTED = torch.zeros(24, 24, dtype=torch.bool)
EXPECTED[4:16, 4:20] = True


def _image(value: int) -> Image.Image:
    pixels = np.full((48, 64, 3), 20, dtype=np.uint8)
    pixels[8:32, 16:48] = value
    return Image.fromarray(pixels)


def _folder(root: Path) -> Path:
    """val/{cat,dog}/{0,1,2}.png with a bright rectangle; masks for every image but dog/2."""
    masks = root / "masks"
    for name in ("cat", "dog"):
        (root / "val" / name).mkdir(parents=True)
        (masks / name).mkdir(parents=True)
        for index in range(3):
            _image(200 + 10 * index).save(root / "val" / name / f"{index}.png")
            if (name, index) == ("dog", 2):
                continue
            mask = np.zeros((48, 64), dtype=np.uint8)
            mask[8:32, 16:48] = 1 if index == 0 else 255  # any nonzero value is object
            if (name, index) == ("cat", 1):  # a mask at half the image's size
                mask = mask[::2, ::2]
            Image.fromarray(mask).save(masks / name / f"{index}.png")
    return masks


def _data(root: Path, **options) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        str(root / "val"),
        str(root / "val"),
        image_size=24,
        resize_size=24,
        batch_size=6,
        num_workers=0,
        **options,
    )


def test_masks_follow_the_image_geometry_in_eval_batches_only(tmp_path) -> None:
    masks = _folder(tmp_path)
    (masks / "dog" / "2.png").write_bytes((masks / "dog" / "1.png").read_bytes())
    data = _data(tmp_path, masks_dir=str(masks))
    batch = next(iter(data.val_dataloader()))
    assert batch["mask"].shape == (6, 24, 24) and batch["mask"].dtype == torch.bool
    for mask in batch["mask"]:
        assert torch.equal(mask, EXPECTED)
    # The image is bright exactly where the mask is (away from the blurred border).
    assert (batch["image"][:, :, 6:14, 6:18] > 0.7).all()
    assert (batch["image"][:, :, :, :2] < 0.15).all()
    assert batch["label"].tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(next(iter(data.test_dataloader()))["mask"], batch["mask"])
    train = next(iter(data.train_dataloader()))
    assert "mask" not in train and train["image"].shape == (6, 3, 24, 24)


def test_boxes_become_masks_and_fill_in_missing_mask_files(tmp_path) -> None:
    masks = _folder(tmp_path)
    boxes = {"dog/2.png": [[16, 8, 48, 32]], "./cat/0.png": [[0, 0, 4, 4]]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    only_boxes = _data(tmp_path, boxes_file=str(tmp_path / "boxes.json"))
    dataset = only_boxes.val_dataloader().dataset
    assert torch.equal(dataset[5]["mask"], EXPECTED)  # dog/2 from its box
    with pytest.raises(FileNotFoundError, match="no object mask"):
        dataset[1]  # cat/1 has neither a box nor (here) a mask folder
    both = _data(tmp_path, masks_dir=str(masks), boxes_file=str(tmp_path / "boxes.json"))
    batch = next(iter(both.val_dataloader()))
    for mask in batch["mask"]:  # cat/0's mask file wins over its (different) box
        assert torch.equal(mask, EXPECTED)
    # Two boxes: their union; a box beyond the crop leaves nothing.
    boxes["dog/2.png"] = [[16, 8, 32, 32], [32, 8, 48, 32]]
    boxes["dog/1.png"] = [[0, 0, 8, 48]]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    dataset = _data(tmp_path, boxes_file=str(tmp_path / "boxes.json")).val_dataloader().dataset
    assert torch.equal(dataset[5]["mask"], EXPECTED)
    assert not dataset[4]["mask"].any()


def test_missing_masks_are_an_error(tmp_path) -> None:
    masks = _folder(tmp_path)
    dataset = _data(tmp_path, masks_dir=str(masks)).val_dataloader().dataset
    with pytest.raises(FileNotFoundError, match="2.png"):
        dataset[5]
    with pytest.raises(FileNotFoundError, match="masks_dir"):
        _data(tmp_path, masks_dir=str(tmp_path / "nowhere"))


def test_test_list_restricts_the_test_set_in_list_order(tmp_path) -> None:
    _folder(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("# the fixed evaluation images\ndog/1.png\n\n./cat/2.png\n")
    data = _data(tmp_path, test_list=str(listing))
    batch = next(iter(data.test_dataloader()))
    assert batch["label"].tolist() == [1, 0]
    assert batch["index"].tolist() == [0, 1]
    assert torch.allclose(batch["image"][0, 0, 6, 10], torch.tensor(210 / 255), atol=0.02)
    assert torch.allclose(batch["image"][1, 0, 6, 10], torch.tensor(220 / 255), atol=0.02)
    assert "mask" not in batch
    assert len(data.val_dataloader().dataset) == 6  # validation keeps every image

    listing.write_text("dog/1.png\ncat/9.png\n")
    with pytest.raises(FileNotFoundError, match="cat/9.png"):
        _data(tmp_path, test_list=str(listing)).test_dataloader()
    listing.write_text("dog/1.png\ndog/1.png\n")
    with pytest.raises(ValueError, match="twice"):
        _data(tmp_path, test_list=str(listing)).test_dataloader()
