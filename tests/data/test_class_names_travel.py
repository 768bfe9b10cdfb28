"""Class folder names travel: ImageFolder training -> head checkpoint -> infer.py records."""

from __future__ import annotations

import json

import numpy as np
import torch
from helpers import quiet_trainer
from PIL import Image

import lcam
from lcam.data import ImageFolderDataModule
from lcam.inference import main as infer_main
from lcam.training import LCAMModule

CLASSES = ["cat", "dog", "zebra"]


def image_folders(root):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for index in range(2):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{index}.png")
    return root


def test_a_head_trained_on_named_folders_writes_their_names(tmp_path) -> None:
    root = image_folders(tmp_path / "data")
    data = ImageFolderDataModule(
        train_dir=str(root / "train"),
        val_dir=str(root / "val"),
        image_size=32,
        resize_size=32,
        batch_size=6,
        num_workers=0,
    )
    module = LCAMModule(
        backbone="lcam.models.TinyResNet",
        num_classes=3,
        input_size=32,
        head="lcam_fm",
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
        lr_scheduler=None,
    )
    assert module.backbone.class_names is None  # a local model names no classes
    trainer = quiet_trainer(max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    checkpoint = tmp_path / "last.ckpt"
    trainer.save_checkpoint(checkpoint)

    assert lcam.load_explainer(checkpoint).backbone.class_names == CLASSES
    output = tmp_path / "maps"
    argv = ["--checkpoint", str(checkpoint), "--input", str(root / "val"), "--output", str(output)]
    assert infer_main([*argv, "--no-progress", "--num-workers", "0"]) == 0
    records = [
        json.loads(line) for line in (output / "predictions.jsonl").read_text().split("\n") if line
    ]
    assert len(records) == 6
    for record in records:
        assert record["target_name"] == CLASSES[record["target"]]
        assert [top["name"] for top in record["top5"]] == [
            CLASSES[t["class"]] for t in record["top5"]
        ]
    # --target takes a folder name too.
    named = ["--target", "zebra", "--output", str(tmp_path / "zebra")]
    assert infer_main([*argv[:4], *named, "--no-progress", "--num-workers", "0"]) == 0
    zebra = (tmp_path / "zebra" / "predictions.jsonl").read_text().split("\n")
    assert {json.loads(line)["target_name"] for line in zebra if line} == {"zebra"}
