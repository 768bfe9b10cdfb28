"""The removed-fraction objective: the map's top region removed with a fill, relaxed; the columns
it trains on; its place in LCAMModule."""

from __future__ import annotations

import pytest
import torch
from helpers import shapes_module

from lcam.data import SyntheticShapes
from lcam.maps import normalise_maps
from lcam.metrics.common import keep_count
from lcam.training import RemovedFractionLoss
from lcam.training.kept_fraction import top_regions

FRACTIONS = (0.05, 0.1, 0.2, 0.3)


def _batch(count: int = 8) -> dict[str, torch.Tensor]:
    items = [SyntheticShapes(count, image_size=64, seed=5)[index] for index in range(count)]
    return {
        "image": torch.stack([item["image"] for item in items]),
        "label": torch.tensor([item["label"] for item in items]),
        "mask": torch.stack([item["mask"] for item in items]),
    }


def test_a_small_temperature_removes_exactly_the_top_pixels() -> None:
    ranks = torch.stack(
        [torch.randperm(480, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    )
    maps = (ranks.float() / 480).view(4, 20, 24)  # no ties: neighbours 1/480 apart
    regions = top_regions(maps, FRACTIONS, 1e-5)
    for fraction, region in zip(FRACTIONS, regions, strict=True):
        count = keep_count(fraction, 480)
        top = maps.flatten(1).topk(count, dim=1).indices
        expected = torch.zeros(4, 480).scatter_(1, top, 1.0).view(4, 20, 24)
        assert (region - expected).abs().max() < 1e-3, fraction


def test_the_loss_is_the_probability_left_after_removing_the_top_region() -> None:
    """With a near-hard edge and a black fill, the term equals ``-log(1 - p_c + 1e-4)`` of the
    images whose top pixels are set to black, computed here apart from the loss."""
    module = shapes_module()
    batch = _batch()
    images = batch["image"]
    with torch.no_grad():
        labels = module.backbone(images).argmax(1)
    maps = torch.rand(8, 64, 64, generator=torch.Generator().manual_seed(1))
    objective = RemovedFractionLoss(FRACTIONS, fills=("black",), temperature=1e-6)
    with torch.no_grad():
        loss = objective(maps, images, labels, module.backbone)
        expected = []
        for fraction in FRACTIONS:
            count = keep_count(fraction, 64 * 64)
            top = normalise_maps(maps).flatten(1).topk(count, dim=1).indices
            keep = torch.ones(8, 64 * 64).scatter_(1, top, 0.0).view(8, 1, 64, 64)
            probability = module.backbone(images * keep).softmax(1)[torch.arange(8), labels]
            expected.append(-torch.log(1 - probability + 1e-4))
    assert torch.allclose(loss, torch.cat(expected).mean(), atol=1e-4), float(loss)


def test_removing_the_object_costs_less_than_removing_background_and_has_a_gradient() -> None:
    """On the shapes, a map whose top pixels cover the object (grown by a margin, so the hole does
    not keep the silhouette) loses less than the same map moved onto the background, and the
    relaxed edge passes a gradient to the raw map."""
    module = shapes_module()
    batch = _batch()
    with torch.no_grad():
        labels = module.backbone(batch["image"]).argmax(1)
    objective = RemovedFractionLoss((0.3,), fills=("blur",), temperature=0.05)
    grown = torch.nn.functional.max_pool2d(batch["mask"].float()[:, None], 9, 1, 4)[:, 0]
    on_object = grown + 0.01 * torch.rand(grown.shape, generator=torch.Generator().manual_seed(2))
    off_object = on_object.roll(shifts=(32, 32), dims=(1, 2))
    raw = on_object.clone().requires_grad_(True)
    good = objective(raw, batch["image"], labels, module.backbone)
    bad = objective(off_object, batch["image"], labels, module.backbone)
    assert float(good) < float(bad) - 0.5, (float(good), float(bad))
    good.backward()
    assert raw.grad is not None and raw.grad.abs().sum() > 0


def test_one_draw_per_image_scores_one_fraction_each() -> None:
    """``sampling="one"``: one pass per image, the drawn fraction's removal (replayed draws)."""
    module = shapes_module()
    images = _batch()["image"]
    with torch.no_grad():
        labels = module.backbone(images).argmax(1)
    maps = torch.rand(8, 64, 64, generator=torch.Generator().manual_seed(1))
    one = RemovedFractionLoss(FRACTIONS, ("black",), 1e-6, "one", torch.Generator().manual_seed(4))
    per_fraction = []
    with torch.no_grad():
        for fraction in FRACTIONS:
            single = RemovedFractionLoss((fraction,), ("black",), 1e-6)
            per_fraction.append(
                torch.stack(
                    [single(maps[i : i + 1], images[i : i + 1], labels[i : i + 1], module.backbone)
                     for i in range(8)]
                )
            )  # fmt: skip
        estimate = one(maps, images, labels, module.backbone)
    replay = torch.Generator().manual_seed(4)
    torch.randint(1, (8,), generator=replay)  # the fill draw (one kind)
    drawn = torch.randint(len(FRACTIONS), (8,), generator=replay)
    expected = torch.stack(per_fraction)[drawn, torch.arange(8)].mean()
    assert torch.allclose(estimate, expected, atol=1e-5), (float(estimate), float(expected))


@pytest.mark.parametrize(
    ("fills", "columns"),
    [
        (("black", "blur"), {"deletion_auc", "deletion_auc_blur"}),
        (("blur",), {"deletion_auc_blur"}),
        (("mean", "noise"), set()),
    ],
)
def test_trained_on_names_the_deletion_columns_of_the_metrics_own_fills(fills, columns) -> None:
    assert RemovedFractionLoss(fills=fills).trained_on == columns
    module = shapes_module(
        head="tame", removed_fraction_weight=1.0, removed_fraction_options={"fills": list(fills)}
    )
    assert columns <= module.trained_on
    assert not {"insertion_auc", "insertion_auc_black", "road_morf_mean"} & module.trained_on


def test_lcam_module_adds_the_weighted_removed_fraction_term() -> None:
    plain = shapes_module()
    with_term = shapes_module(removed_fraction_weight=2.0)
    with_term.explainer.head.load_state_dict(plain.explainer.head.state_dict())
    batch = _batch()
    logged: dict[str, torch.Tensor] = {}
    for module in (plain, with_term):
        module.log_dict = lambda values, **_: logged.update(values)  # no trainer attached
        module.log = lambda name, value, **_: logged.update({name: value})
    torch.manual_seed(0)
    base = plain.training_step(batch, 0)
    torch.manual_seed(0)
    total = with_term.training_step(batch, 0)
    term = logged["train/removed_fraction"]
    assert term.requires_grad and float(term) > 0
    assert torch.allclose(total, base + 2.0 * term, atol=1e-5)
    assert "removed_fraction" not in plain.map_terms


@pytest.mark.parametrize(
    "bad",
    [{"temperature": 0.0}, {"fractions": (1.5,)}, {"fractions": (0.0,)}, {"fills": ("grey",)}],
)
def test_bad_options_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        RemovedFractionLoss(**bad)
