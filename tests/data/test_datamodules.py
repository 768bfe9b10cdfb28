from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lcam.data import ImageFolderDataModule, SyntheticShapesDataModule


def test_image_folder_batches_are_dicts_with_the_papers_transforms(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for index in range(3):
                pixels = rng.integers(0, 255, (40, 50), dtype=np.uint8)  # grayscale on purpose
                Image.fromarray(pixels).save(tmp_path / split / name / f"{index}.png")
    data = ImageFolderDataModule(
        str(tmp_path / "train"),
        str(tmp_path / "val"),
        image_size=24,
        resize_size=32,
        batch_size=4,
        num_workers=0,
    )
    batch = next(iter(data.val_dataloader()))
    assert batch["image"].shape == (4, 3, 24, 24) and batch["image"].dtype == torch.float32
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    assert batch["label"].tolist() == [0, 0, 0, 1]
    assert data.class_names == ["cat", "dog"]
    assert next(iter(data.train_dataloader()))["image"].shape == (4, 3, 24, 24)


def test_synthetic_splits_are_held_apart_and_carry_masks() -> None:
    data = SyntheticShapesDataModule(train_size=8, val_size=8, test_size=8, batch_size=8)
    train, val = next(iter(data.train_dataloader())), next(iter(data.val_dataloader()))
    assert val["mask"].shape == (8, 64, 64) and val["mask"].dtype == torch.bool
    assert not any(torch.equal(a, b) for a in train["image"] for b in val["image"])
    assert data.class_names[:2] == ["disc", "square"]
