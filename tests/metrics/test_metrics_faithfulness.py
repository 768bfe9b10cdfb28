"""AD/IC: hand-computed values on 4x4 images, exact keep counts with ties, strict IC."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lcam.explainers.base import normalise_maps, upsample_maps
from lcam.metrics import AverageDropIncrease, soft_keep_masks
from lcam.metrics.common import keep_count, pixel_ranks, prepare_maps


class TwoRegionModel(nn.Module):
    """Class-0 probability ``q = 0.5 + 0.4 * (mean(A) - mean(B))`` of channel 0.

    ``A`` = the two left columns, ``B`` = the two right columns of a 4x4 image; the logits are
    ``log(q), log(1 - q)`` so that the softmax gives back ``(q, 1 - q)``.
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        left = images[:, 0, :, :2].mean(dim=(1, 2))
        right = images[:, 0, :, 2:].mean(dim=(1, 2))
        q = 0.5 + 0.4 * (left - right)
        return torch.stack([q.log(), (1 - q).log()], dim=1)


def _image(channel0: list[list[float]]) -> torch.Tensor:
    return torch.tensor(channel0).expand(3, 4, 4)


# Image 1: A = 1, B = 0.5 -> q = 0.7.
IMAGE_1 = _image([[1, 1, 0.5, 0.5]] * 4)
MAP_1 = torch.tensor(
    [
        [1.0, 0.5, 0.5, 0.0],
        [0.5, 0.5, 0.5, 0.0],
        [0.25, 0.25, 0.0, 0.0],
        [0.25, 0.25, 0.0, 0.0],
    ]
)
# Image 2: A = 0.75, B = 0.5 -> q = 0.6; the map selects A (8 tied ones, 8 tied zeros).
IMAGE_2 = _image([[0.75, 0.75, 0.5, 0.5]] * 4)
MAP_2 = torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 4)
# Image 3: only column 0 is bright -> q = 0.7; the map keeps column 0 with value 1 and zeroes
# pixels that are already black, so x * M == x exactly (O == Y) at 100 % and 50 %.
IMAGE_3 = _image([[1, 0, 0, 0]] * 4)
MAP_3 = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 4)

IMAGES = torch.stack([IMAGE_1, IMAGE_2, IMAGE_3])
MAPS = torch.stack([MAP_1, MAP_2, MAP_3])


def test_keep_count_is_ceil_and_robust_to_float_error() -> None:
    assert [keep_count(p, 16) for p in (1.0, 0.5, 0.15)] == [16, 8, 3]
    assert keep_count(0.7, 10) == 7  # 0.7 * 10 = 7.000000000000001 in floats
    assert keep_count(0.85, 224 * 224) == math.ceil(0.85 * 224 * 224)
    assert keep_count(0.15, 224 * 224) == 7527
    with pytest.raises(ValueError):
        keep_count(1.5, 10)


def test_exact_kept_count_with_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    maps = torch.randint(0, 3, (5, 4, 4), generator=generator).float()  # heavy ties
    maps[0] = 0.5  # a constant map: all tied
    ranks = pixel_ranks(maps)
    assert sorted(ranks[1].tolist()) == list(range(16))  # a permutation
    for fraction in (1.0, 0.5, 0.15, 0.3, 0.0):
        kept = (ranks < keep_count(fraction, 16)).sum(dim=1)
        assert kept.tolist() == [math.ceil(round(fraction * 16, 6))] * 5
    # every kept pixel is at least as relevant as every dropped one
    kept = ranks < 3
    flat = maps.flatten(1)
    for image in range(5):
        assert flat[image][kept[image]].min() >= flat[image][~kept[image]].max()
    # ties go to the smaller flat index
    assert torch.equal(ranks[0], torch.arange(16))


def test_soft_masks_keep_soft_values_and_break_ties_by_index() -> None:
    masks = soft_keep_masks(MAPS[:2], (1.0, 0.5, 0.15))
    assert masks.shape == (3, 2, 4, 4)
    assert torch.equal(masks[0], MAPS[:2])  # 100 %: the whole soft map
    expected_50 = torch.tensor(
        [[1.0, 0.5, 0.5, 0.0], [0.5, 0.5, 0.5, 0.0], [0.25, 0.25, 0.0, 0.0], [0.0] * 4]
    )  # 8 kept: 1, five 0.5s, and the first two of the four tied 0.25s
    assert torch.equal(masks[1, 0], expected_50)
    expected_15 = torch.zeros(4, 4)
    expected_15[0, :3] = torch.tensor([1.0, 0.5, 0.5])  # ceil(2.4) = 3: two of five tied 0.5s
    assert torch.equal(masks[2, 0], expected_15)
    expected_15_tied = torch.zeros(4, 4)
    expected_15_tied[0, :2] = 1.0
    expected_15_tied[1, 0] = 1.0  # first three of the eight tied ones in row-major order
    assert torch.equal(masks[2, 1], expected_15_tied)


def test_prepare_maps_normalises_then_upsamples() -> None:
    raw = torch.tensor([[[-2.0, 0.0], [1.0, 2.0]]])
    prepared = prepare_maps(raw, (4, 4))
    assert prepared.shape == (1, 4, 4)
    assert torch.allclose(prepared, upsample_maps(normalise_maps(raw), (4, 4)))
    assert prepared.min() >= 0 and prepared.max() <= 1


def test_ad_ic_by_hand() -> None:
    metric = AverageDropIncrease(TwoRegionModel(), batch_size=4)
    metric.update(IMAGES, MAPS)
    result = metric.compute()
    # O per image and fraction (100 %, 50 %, 15 %), see the module constants:
    #   image 1 (Y = 0.7):  0.65, 0.625, 0.5625       -> drops, never an increase
    #   image 2 (Y = 0.6):  0.8, 0.8, 0.6125          -> increases, no drop
    #   image 3 (Y = 0.7):  0.7 (== Y), 0.7 (== Y), 0.65 -> O == Y must not count for IC
    expected = {
        "ad@100": 100 / 3 * (0.05 / 0.7),
        "ic@100": 100 / 3,
        "ad@50": 100 / 3 * (0.075 / 0.7),
        "ic@50": 100 / 3,
        "ad@15": 100 / 3 * (0.1375 / 0.7 + 0.05 / 0.7),
        "ic@15": 100 / 3,
    }
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key].item() == pytest.approx(value, abs=1e-4), key


def test_ic_is_strict_when_the_masked_image_is_unchanged() -> None:
    metric = AverageDropIncrease(TwoRegionModel(), fractions=(1.0, 0.5))
    metric.update(IMAGES[2:], MAPS[2:])
    result = metric.compute()
    assert result["ic@100"].item() == 0.0 and result["ic@50"].item() == 0.0
    assert result["ad@100"].item() == 0.0 and result["ad@50"].item() == 0.0


def test_given_targets_replace_the_predicted_class() -> None:
    metric = AverageDropIncrease(TwoRegionModel(), fractions=(1.0,))
    metric.update(IMAGES[:1], MAPS[:1], targets=torch.tensor([1]))
    result = metric.compute()
    # class 1: Y = 0.3, O = 0.35 -> an increase, no drop
    assert result["ic@100"].item() == 100.0
    assert result["ad@100"].item() == 0.0


def test_batches_accumulate_and_chunking_does_not_matter() -> None:
    whole = AverageDropIncrease(TwoRegionModel(), batch_size=100)
    whole.update(IMAGES, MAPS)
    split = AverageDropIncrease(TwoRegionModel(), batch_size=1)
    split.update(IMAGES[:1], MAPS[:1])
    split.update(IMAGES[1:], MAPS[1:])
    for key, value in whole.compute().items():
        assert split.compute()[key].item() == pytest.approx(value.item(), abs=1e-5)


def test_low_resolution_maps_are_upsampled() -> None:
    metric = AverageDropIncrease(TwoRegionModel(), fractions=(1.0,))
    low = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    metric.update(IMAGES[1:2], low)
    mask = upsample_maps(low, (4, 4))[0]
    x = IMAGES[1] * mask
    q = 0.5 + 0.4 * (x[0, :, :2].mean() - x[0, :, 2:].mean())
    expected_drop = max(0.0, 0.6 - q.item()) / 0.6
    assert metric.compute()["ad@100"].item() == pytest.approx(100 * expected_drop, abs=1e-4)


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError):
        AverageDropIncrease(TwoRegionModel(), fractions=(1.2,))
    metric = AverageDropIncrease(TwoRegionModel())
    with pytest.raises(ValueError):
        metric.update(IMAGES, MAPS[:2])
    with pytest.raises(ValueError):
        metric.update(IMAGES, MAPS, targets=torch.tensor([0]))


def test_model_is_not_part_of_the_state_dict() -> None:
    metric = AverageDropIncrease(nn.Sequential(nn.Flatten(), nn.LazyLinear(2)))
    assert list(metric.state_dict()) == []


# --- an oracle map beats random and inverted maps on the shipped backbone and shapes data ---


@pytest.fixture(scope="module")
def shapes() -> dict[str, object]:
    from lcam.backbone import FrozenBackbone
    from lcam.data.synthetic import SyntheticShapes
    from lcam.models.tiny import SHAPES_WEIGHTS

    backbone = FrozenBackbone(
        "lcam.models.TinyResNet", num_classes=6, weights=str(SHAPES_WEIGHTS), input_size=64
    )
    dataset = SyntheticShapes(64, image_size=64, seed=1)
    items = [dataset[index] for index in range(32)]
    images = torch.stack([item["image"] for item in items])
    masks = torch.stack([item["mask"] for item in items])
    # oracle: the mask plus a smooth falloff (repeated 5x5 box blur) so that ties are few
    soft = masks.float()[:, None]
    for _ in range(6):
        soft = nn.functional.avg_pool2d(soft, 5, stride=1, padding=2, count_include_pad=False)
    oracle = masks.float() + 0.5 * soft[:, 0]
    maps = {
        "oracle": oracle,
        "random": torch.rand(masks.shape, generator=torch.Generator().manual_seed(0)),
        "inverted": 1 - oracle,
    }
    return {"backbone": backbone, "images": images, "masks": masks, "maps": maps}


def _scores(metric_factory, shapes: dict, count: int, **update) -> dict[str, dict[str, float]]:
    scores = {}
    for name, maps in shapes["maps"].items():
        metric = metric_factory()
        metric.update(shapes["images"][:count], maps[:count], **update)
        scores[name] = {key: value.item() for key, value in metric.compute().items()}
    return scores


def test_oracle_beats_random_and_inverted_on_ad_ic(shapes: dict) -> None:
    scores = _scores(lambda: AverageDropIncrease(shapes["backbone"], batch_size=128), shapes, 24)
    oracle, random, inverted = scores["oracle"], scores["random"], scores["inverted"]
    for key in ("ad@100", "ad@50", "ad@15"):
        assert oracle[key] < min(random[key], inverted[key]), (key, scores)
    for key in ("ic@100", "ic@50", "ic@15"):
        assert oracle[key] > max(random[key], inverted[key]), (key, scores)
    assert random["ad@50"] < inverted["ad@50"]


def test_oracle_beats_random_and_inverted_on_deletion_insertion(shapes: dict) -> None:
    from lcam.metrics import DeletionInsertion

    scores = _scores(
        lambda: DeletionInsertion(shapes["backbone"], steps=6, batch_size=128), shapes, 16
    )
    oracle, random, inverted = scores["oracle"], scores["random"], scores["inverted"]
    assert oracle["deletion_auc"] < random["deletion_auc"] < inverted["deletion_auc"], scores
    assert oracle["insertion_auc"] > random["insertion_auc"] > inverted["insertion_auc"], scores


def test_oracle_beats_random_and_inverted_on_road(shapes: dict) -> None:
    from lcam.metrics import ROAD

    scores = _scores(
        lambda: ROAD(shapes["backbone"], fractions=(0.2, 0.5), batch_size=128), shapes, 8
    )
    oracle, random, inverted = scores["oracle"], scores["random"], scores["inverted"]
    for key in ("morf@20", "morf@50"):  # removing the object first must hurt most
        assert oracle[key] < min(random[key], inverted[key]), (key, scores)
    for key in ("lerf@20", "lerf@50"):  # removing the background first must hurt least
        assert oracle[key] > inverted[key], (key, scores)
        assert oracle[key] >= random[key], (key, scores)


def test_oracle_beats_random_and_inverted_on_localisation(shapes: dict) -> None:
    from lcam.metrics import EnergyPointingGame, PointingGame

    masks = shapes["masks"]
    for factory in (lambda: PointingGame(tolerance=3), EnergyPointingGame):
        values = {}
        for name, maps in shapes["maps"].items():
            metric = factory()
            metric.update(maps, masks)
            values[name] = metric.compute().item()
        assert values["oracle"] > values["random"] > values["inverted"], values
