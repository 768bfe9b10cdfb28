"""The validation faithfulness subset represents the validation set, and it can score an
independent metric (deletion/insertion AUC) that checkpoints can be chosen by.

A class-sorted 10-class folder (``ImageFolder`` numbers images class by class) with
``faithfulness_subset: 20`` must score 2 images of every class, not the first 20 images (5 classes);
each image's grey level encodes its class, so the scored images are identified from the pixels
the metric receives. Under DDP every subset image is scored by exactly one process.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from helpers import quiet_trainer, shapes_module
from PIL import Image
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DistributedSampler

from lcam.data import CompositeImages, ImageFolderDataModule, SyntheticShapesDataModule
from lcam.metrics import AverageDropIncrease, DeletionInsertion
from lcam.training import LCAMModule
from lcam.training.validation_subset import dataset_labels, own_indices, stratified_subset

CLASSES, PER_CLASS, SIDE = 10, 4, 32
LEVELS = CLASSES * PER_CLASS + 1  # image j of class c has grey level (c * PER_CLASS + j + 1) / 41


def class_sorted_folder(root) -> None:
    """``root/class_c/image_j.png``: one uniform grey image per (class, item), level unique."""
    for label in range(CLASSES):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        for item in range(PER_CLASS):
            level = round(255 * (label * PER_CLASS + item + 1) / LEVELS)
            pixels = np.full((SIDE, SIDE, 3), level, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"image_{item}.png")


def test_a_class_sorted_folder_is_scored_over_every_class(tmp_path, monkeypatch, caplog) -> None:
    class_sorted_folder(tmp_path / "val")
    scored: list[torch.Tensor] = []
    update = AverageDropIncrease.update

    def spy(metric, images, maps, targets=None):  # the classes of the images the metric scores
        level = torch.round(images[:, 0, 0, 0] * 255) / 255 * LEVELS
        scored.append(((level.round() - 1) // PER_CLASS).long())
        update(metric, images, maps, targets)

    monkeypatch.setattr(AverageDropIncrease, "update", spy)
    data = ImageFolderDataModule(
        train_dir=str(tmp_path / "val"), val_dir=str(tmp_path / "val"), image_size=SIDE,
        resize_size=SIDE, batch_size=16, num_workers=0,
    )  # fmt: skip
    module = LCAMModule(
        backbone="lcam.models.TinyResNet", num_classes=CLASSES, input_size=SIDE,
        faithfulness_subset=20,
    )  # fmt: skip
    with caplog.at_level(logging.INFO):
        logged = quiet_trainer().validate(module, datamodule=data, verbose=False)[0]
        quiet_trainer().validate(module, datamodule=data, verbose=False)  # the same subset again
    counts = torch.bincount(torch.cat(scored), minlength=CLASSES)
    assert counts.tolist() == [2 * 2] * CLASSES, f"images scored per class: {counts.tolist()}"
    assert "val/ad_15" in logged
    line = "class-stratified over 10 of 10 classes (class_0: 2, class_1: 2"
    assert caplog.text.count(line) == 1, caplog.text  # logged once


def test_uneven_classes_take_turns_until_one_runs_out() -> None:
    labels = torch.tensor([0] * 3 + [1] * 50 + [2] * 10)
    chosen = stratified_subset(labels, len(labels), 30)
    assert torch.bincount(labels[chosen]).tolist() == [3, 17, 10]
    assert torch.equal(chosen, stratified_subset(labels, len(labels), 30))  # fixed draw
    assert len(torch.unique(chosen)) == 30


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("processes", [2, 3, 4])
def test_under_ddp_each_subset_image_is_scored_by_one_process(shuffle: bool, processes: int):
    """A set of 10 images padded to 12 by the sampler (3 or 4 processes) or not (2)."""
    dataset = list(range(10))
    subset = stratified_subset(torch.tensor([i % 3 for i in dataset]), len(dataset), 7)
    shares = []
    for rank in range(processes):
        sampler = DistributedSampler(dataset, processes, rank, shuffle=shuffle, seed=1)
        mine = own_indices(sampler)
        assert mine is not None and set(mine.tolist()) <= set(sampler)
        shares.append(subset[torch.isin(subset, mine)])
    assert sorted(torch.cat(shares).tolist()) == subset.tolist()
    assert own_indices(torch.utils.data.SequentialSampler(dataset)) is None


def test_deletion_insertion_is_logged_equal_to_the_metric_and_monitorable(tmp_path) -> None:
    data = SyntheticShapesDataModule(train_size=24, val_size=16, batch_size=8)
    module = shapes_module(
        faithfulness_subset=6,
        faithfulness_metrics=["adic", "deletion_insertion"],
        faithfulness_options={"deletion_steps": 8},
    )
    best = ModelCheckpoint(dirpath=tmp_path, monitor="val/deletion_auc", mode="min")
    trainer = Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        max_epochs=1, num_sanity_val_steps=0, callbacks=[best],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert best.best_model_score is not None and len(list(tmp_path.glob("*.ckpt"))) == 1
    logged = quiet_trainer().validate(module, datamodule=data, verbose=False)[0]
    chosen = module.faithfulness.indices
    assert chosen is not None and len(chosen) == 6
    val = data.dataset("val")
    batch = torch.utils.data.default_collate([val[i] for i in chosen.tolist()])
    with torch.no_grad():
        maps = module._step(batch)["predicted_logit_maps"]
    direct = DeletionInsertion(module.backbone, steps=8)
    direct.update(batch["image"], maps)
    expected = direct.compute()
    for name in ("deletion_auc", "insertion_auc"):
        assert logged[f"val/{name}"] == pytest.approx(float(expected[name]), abs=1e-5), name
    assert "val/ad_15" in logged  # both metrics at once
    # A real measurement: removing the map's top pixels first costs more than adding them back.
    assert logged["val/deletion_auc"] < logged["val/insertion_auc"]


def test_labels_are_read_from_folders_image_lists_and_subsets(tmp_path) -> None:
    class_sorted_folder(tmp_path / "val")
    expected = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    boxes = tmp_path / "boxes.json"
    boxes.write_text("{}")
    for side_data in ({}, {"boxes_file": str(boxes)}):  # ImageFolder targets; image samples
        data = ImageFolderDataModule(val_dir=str(tmp_path / "val"), num_workers=0, **side_data)
        dataset = data.val_dataloader().dataset
        assert torch.equal(dataset_labels(dataset), expected), type(dataset).__name__
    subset = torch.utils.data.Subset(dataset, [39, 0, 17])
    assert dataset_labels(subset).tolist() == [9, 0, 4]


@pytest.mark.parametrize("kind", ["shapes", "composites"])
def test_built_in_datasets_give_their_labels_without_rendering(kind: str) -> None:
    """The stratified subset needs the labels: the built-in datasets give them as ``targets``
    (drawn first from each item's generator) equal to the rendered items' labels, so a
    ``faithfulness_subset`` on them covers every class."""
    if kind == "shapes":
        dataset = SyntheticShapesDataModule(val_size=24).dataset("val")
    else:
        dataset = CompositeImages(24, image_size=32, seed=3, photos="diverse")
    rendered = [int(dataset[index]["label"]) for index in range(len(dataset))]
    assert dataset_labels(dataset).tolist() == rendered
    assert len(set(rendered)) >= 4  # several classes, so the equality is not trivial
    indices = stratified_subset(dataset_labels(dataset), len(dataset), len(set(rendered)))
    assert {rendered[i] for i in indices.tolist()} == set(rendered)  # one image of each class
