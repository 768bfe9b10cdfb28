"""The learned explainer knows which classes it was trained on and flags the others.

A head learns one map per class, from the training images explained as that class only; a class
that never occurred keeps its initial map, which can look like an explanation. The counts are
saved with the head, old files load with the counts unknown, and inference records the flag.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from helpers import quiet_trainer, shapes_module
from PIL import Image

import lcam
from lcam.api import STATE_PREFIX
from lcam.backbone import FrozenBackbone
from lcam.data import SyntheticShapesDataModule
from lcam.explainers import LearnedExplainer, UntrainedClassWarning
from lcam.inference.files import collect_images
from lcam.inference.local import run_inference
from lcam.models.tiny import SHAPES_WEIGHTS


def _explainer() -> LearnedExplainer:
    torch.manual_seed(0)
    backbone = FrozenBackbone("lcam.models.TinyResNet", num_classes=5, input_size=32)
    return lcam.build_explainer(backbone, "lcam_fm")


def test_classes_without_training_examples_are_flagged_and_warned_once() -> None:
    explainer = _explainer()
    images = torch.rand(3, 3, 32, 32)
    targets = torch.tensor([0, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedClassWarning)  # no counts: nothing to flag
        assert not explainer.explain(images, targets).untrained.any()
    explainer.count_training_labels(torch.tensor([0, 0, 2]))
    assert explainer.class_examples.tolist() == [2, 0, 1, 0, 0]
    with pytest.warns(UntrainedClassWarning, match=r"class\(es\) 1 had no training example"):
        flags = explainer.explain(images, targets).untrained
    assert flags.tolist() == [False, True, False]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedClassWarning)  # once per explainer
        assert explainer.explain(images, torch.tensor([3, 0, 0])).untrained.tolist() == [
            True,
            False,
            False,
        ]


def test_counts_are_saved_and_old_files_load_with_counts_unknown(tmp_path) -> None:
    explainer = _explainer()
    explainer.count_training_labels(torch.tensor([4, 4, 1]))
    path = lcam.save_explainer(explainer, tmp_path / "explainer.pt")
    loaded = lcam.load_explainer(path, device="cpu")
    assert loaded.class_examples.tolist() == [0, 1, 0, 0, 2]
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["state_dict"][STATE_PREFIX + "class_examples"]  # as written before the counts
    torch.save(checkpoint, path)
    old = lcam.load_explainer(path, device="cpu")
    assert old.class_examples.tolist() == [0] * 5
    assert old.untrained_targets(torch.tensor([0, 3])) is None


def test_training_counts_the_explained_class_of_every_training_image() -> None:
    data = SyntheticShapesDataModule(train_size=96, val_size=32, batch_size=32)
    module = shapes_module()
    quiet_trainer(max_epochs=2, limit_val_batches=0).fit(module, datamodule=data)
    with torch.no_grad():
        predicted = torch.cat(
            [module.backbone(batch["image"]).argmax(1) for batch in data.train_dataloader()]
        )
    expected = 2 * torch.bincount(predicted, minlength=module.backbone.num_classes)
    assert module.explainer.class_examples.tolist() == expected.tolist()


def test_inference_records_say_which_maps_are_untrained(tmp_path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shapes = SyntheticShapesDataModule(test_size=6).dataset("test")
    images = torch.stack([shapes[i]["image"] for i in range(6)])  # (6, 3, 64, 64)
    for index, image in enumerate(images):
        pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / f"{index}.png")
    backbone = FrozenBackbone(
        "lcam.models.TinyResNet", weights=str(SHAPES_WEIGHTS), num_classes=6, input_size=64
    )
    explainer = lcam.build_explainer(backbone, "lcam_fm")  # the shapes model: varied predictions
    with torch.no_grad():
        predicted = explainer.backbone(images).argmax(1)
    trained = int(predicted[0])
    explainer.count_training_labels(torch.tensor([trained]))
    expected = {f"{i}.png": int(c) != trained for i, c in enumerate(predicted)}
    assert set(expected.values()) == {True, False}  # both kinds occur
    with pytest.warns(UntrainedClassWarning):
        counts = run_inference(
            explainer,
            collect_images([folder]),
            tmp_path / "out",
            batch_size=2,
            num_workers=0,
            progress=False,
        )
    assert counts == {"done": 6, "skipped": 0, "failed": 0}
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").open()]
    assert {r["name"]: r["untrained"] for r in records} == expected
