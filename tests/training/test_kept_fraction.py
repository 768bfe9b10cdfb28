"""The kept-fraction objective: the protocol's masks, relaxed; its place in LCAMModule."""

from __future__ import annotations

import pytest
import torch
from helpers import shapes_module

from lcam.data import SyntheticShapes
from lcam.metrics.common import soft_keep_masks
from lcam.training import KeptFractionLoss, relaxed_keep_masks

FRACTIONS = (1.0, 0.5, 0.15)


def _batch(count: int = 8) -> dict[str, torch.Tensor]:
    items = [SyntheticShapes(count, image_size=64, seed=5)[index] for index in range(count)]
    return {
        "image": torch.stack([item["image"] for item in items]),
        "label": torch.tensor([item["label"] for item in items]),
        "mask": torch.stack([item["mask"] for item in items]),
    }


def test_hard_limit_is_the_protocols_mask_and_a_small_temperature_approaches_it() -> None:
    maps = torch.rand(4, 20, 24, generator=torch.Generator().manual_seed(0))  # no ties
    protocol = soft_keep_masks(maps, FRACTIONS)
    assert torch.equal(relaxed_keep_masks(maps, FRACTIONS, 0.0), protocol)
    close = relaxed_keep_masks(maps, FRACTIONS, 1e-5)
    assert (close - protocol).abs().max() < 1e-3
    soft = relaxed_keep_masks(maps, FRACTIONS, 0.1)
    assert (soft - protocol).abs().max() > 0.1  # the edge is soft: the choice has a gradient
    kept = (protocol[2] > 0).flatten(1).sum(1)
    assert kept.tolist() == [72] * 4  # ceil(0.15 * 480)


def test_selection_gets_a_gradient_and_rewards_maps_on_the_object() -> None:
    """On the shapes, a map that puts its top pixels on the object loses less than the same map
    moved onto the background (not its complement: a black hole would keep the silhouette), and
    the relaxed edge passes a gradient to the raw map."""
    module = shapes_module()
    batch = _batch()
    with torch.no_grad():
        labels = module.backbone(batch["image"]).argmax(1)
    objective = KeptFractionLoss(FRACTIONS, temperature=0.05)
    on_object = batch["mask"].float() + 0.01 * torch.rand(batch["mask"].shape)
    off_object = on_object.roll(shifts=(32, 32), dims=(1, 2))
    raw = on_object.clone().requires_grad_(True)
    good = objective(raw, batch["image"], labels, module.backbone)
    bad = objective(off_object, batch["image"], labels, module.backbone)
    assert float(good) < float(bad) - 0.5, (float(good), float(bad))
    good.backward()
    assert raw.grad is not None and raw.grad.abs().sum() > 0


def test_lcam_module_adds_the_weighted_kept_fraction_term() -> None:
    plain = shapes_module()
    with_term = shapes_module(kept_fraction_weight=2.0, kept_fraction_options={"temperature": 0.1})
    with_term.explainer.head.load_state_dict(plain.explainer.head.state_dict())
    batch = _batch()
    logged: dict[str, torch.Tensor] = {}
    for module in (plain, with_term):
        module.log_dict = lambda values, **_: logged.update(values)  # no trainer attached
        module.log = lambda name, value, **_: logged.update({name: value})
    base = plain.training_step(batch, 0)
    total = with_term.training_step(batch, 0)
    term = logged["train/kept_fraction"]
    assert term.requires_grad and float(term) > 0
    assert torch.allclose(total, base + 2.0 * term, atol=1e-5)
    assert "kept_fraction" not in plain.map_terms


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"fractions": (1.5,)}])
def test_bad_options_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        KeptFractionLoss(**bad)
