from __future__ import annotations

import pytest
import torch
from helpers import quiet_trainer, shapes_module

from lcam.data import SyntheticShapesDataModule
from lcam.localisation import in_mask_energy
from lcam.module import LCAMModule


def _loss_on(module: LCAMModule, batch: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        return module._step(batch)["terms"]["loss"].item()


@pytest.mark.parametrize("head", ["lcam_fm", "lcam_img"])
def test_a_few_training_steps_lower_the_loss(head: str) -> None:
    data = SyntheticShapesDataModule(train_size=256, val_size=32, batch_size=32)
    fixed = next(iter(data.val_dataloader()))
    module = shapes_module(head)
    before = _loss_on(module, fixed)
    quiet_trainer(max_steps=12, limit_val_batches=0).fit(module, datamodule=data)
    after = _loss_on(module, fixed)
    assert after < 0.8 * before, (before, after)
    assert not any(p.requires_grad for p in module.backbone.parameters())
    assert not module.backbone.model.training


def test_trained_head_localises_the_objects() -> None:
    data = SyntheticShapesDataModule(train_size=1536, val_size=256, test_size=256, batch_size=64)
    module = shapes_module("lcam_fm")
    quiet_trainer(max_epochs=1, limit_val_batches=0).fit(module, datamodule=data)
    held_apart = data.dataset("test")
    batch = torch.utils.data.default_collate([held_apart[i] for i in range(len(held_apart))])
    explanation = module.explainer.explain(batch["image"])
    energy = in_mask_energy(explanation.maps, batch["mask"]).mean().item()
    area = batch["mask"].float().mean().item()
    assert energy >= 2 * area, (energy, area)
    with torch.no_grad():
        step = module._step(batch)
    assert step["masked_correct"].mean().item() > 0.5  # chance is 1/6


def test_optimizer_groups_follow_the_recipe() -> None:
    module = LCAMModule(
        backbone="lcam.models.TinyResNet", num_classes=3, input_size=32, bias_weight_decay=False
    )
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"]
    weights, biases = optimizer.param_groups
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]
    assert weights["lr"] == pytest.approx(1e-2) and biases["lr"] == pytest.approx(2e-2)
    assert weights["weight_decay"] == pytest.approx(5e-4) and biases["weight_decay"] == 0
    assert biases["params"][0] is module.explainer.head.conv.bias
    scheduler = configured["lr_scheduler"]["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.ExponentialLR) and scheduler.gamma == 0.75


def test_dataset_labels_option_uses_the_batch_labels() -> None:
    module = shapes_module(labels="dataset")
    batch = {"image": torch.rand(4, 3, 64, 64), "label": torch.tensor([5, 5, 5, 5])}
    with torch.no_grad():
        logits_module = module._step(batch)
    ce_with_dataset_labels = logits_module["terms"]["ce"]
    module.hparams.labels = "predicted"
    with torch.no_grad():
        ce_with_predictions = module._step(batch)["terms"]["ce"]
    assert not torch.isclose(ce_with_dataset_labels, ce_with_predictions)
