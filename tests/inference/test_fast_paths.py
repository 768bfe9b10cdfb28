from __future__ import annotations

import pytest
import torch
from helpers import correlation

import lcam
from lcam.data import SyntheticShapes
from lcam.inference import autocast, prepare_model
from lcam.maps import normalise_maps, upsample_maps
from lcam.models.tiny import SHAPES_WEIGHTS


def _explainer(head: str = "lcam_fm") -> lcam.LearnedExplainer:
    backbone = lcam.FrozenBackbone(
        "lcam.models.TinyResNet", num_classes=6, weights=str(SHAPES_WEIGHTS), input_size=64
    )
    torch.manual_seed(0)
    explainer = lcam.build_explainer(backbone, head=head)
    mixing = explainer.head.fuse if head.startswith("tame") else explainer.head.conv
    torch.nn.init.normal_(mixing.weight, std=mixing.in_channels**-0.5)
    return explainer


def _images(count: int = 8) -> torch.Tensor:
    dataset = SyntheticShapes(count, seed=3)
    return torch.stack([dataset[i]["image"] for i in range(count)])


def test_bf16_maps_agree_with_float32() -> None:
    explainer, images = _explainer(), _images()
    reference = explainer.explain(images)
    with autocast(torch.device("cpu"), "bf16"):
        reduced = explainer.explain(images)
    assert reduced.maps.dtype == torch.float32
    assert (correlation(reduced.maps, reference.maps) >= 0.99).all()
    assert torch.equal(reduced.targets, reference.targets)


def test_channels_last_maps_agree_with_float32() -> None:
    explainer, images = _explainer(), _images()
    reference = explainer.explain(images).maps
    prepare_model(explainer, channels_last=True)
    maps = explainer.explain(images.contiguous(memory_format=torch.channels_last)).maps
    assert (correlation(maps, reference) >= 0.99).all()
    torch.testing.assert_close(maps, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("head", ["lcam_fm", "tame", "tame_shared"])
def test_all_class_maps_equal_separate_single_class_calls(head: str) -> None:
    # explain() computes the explained class's map alone; class_maps() all K at once.
    explainer, images = _explainer(head), _images(4)
    explainer.map_activation = "logit"
    with torch.no_grad():
        _, class_maps = explainer.class_maps(images)
    for k in range(6):
        single = explainer.explain(images, [k] * 4).maps
        expected = normalise_maps(upsample_maps(class_maps[:, k], (64, 64)))
        torch.testing.assert_close(single, expected, atol=1e-5, rtol=0)


def test_compiled_graphs_give_the_same_logits() -> None:
    explainer, images = _explainer(), _images(2)
    reference = explainer.explain(images)
    prepare_model(explainer, compile=True)
    compiled = explainer.explain(images)
    torch.testing.assert_close(compiled.logits, reference.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(compiled.maps, reference.maps, atol=1e-4, rtol=0)
