"""Degenerate maps are flagged and warned about once, never returned silently."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import PlantedRegion, planted_backbone
from torch import nn

from lcam.backbone import FrozenBackbone
from lcam.explainers import DegenerateMapWarning, get_explainer
from lcam.explainers.base import degenerate_maps
from lcam.explanation import Explanation

SIZE = 16


class NegativeConv(nn.Module):
    """``conv`` gives negative values everywhere (it is not post-activation); the classifier
    reads ``ReLU(-conv)``, so its logits depend on the image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv.weight.uniform_(0.0, 0.1)
            self.conv.bias.fill_(-3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool((-self.conv(x)).relu()).flatten(1))


class Blind(nn.Module):
    """Logits that do not depend on the input: a constant classifier after a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def raw(model: nn.Module, layer: str) -> FrozenBackbone:
    return FrozenBackbone(model, input_size=SIZE, target_layer=layer, mean=(0, 0, 0), std=(1, 1, 1))


def explain_recording(explainer, images, targets=None) -> tuple[Explanation, list]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = explainer.explain(images, targets)
    return result, [w for w in caught if issubclass(w.category, DegenerateMapWarning)]


def test_scorecam_on_a_pre_activation_layer_warns_and_flags() -> None:
    torch.manual_seed(0)
    backbone = raw(NegativeConv(), "conv")
    images = torch.rand(2, 3, SIZE, SIZE)
    assert backbone.run(images).features.max() < 0
    result, caught = explain_recording(get_explainer("scorecam", backbone), images)
    assert result.degenerate.tolist() == [True, True]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "scorecam" in message and "[0, 1]" in message
    assert "not post-activation" in message and "Score-CAM weights are positive" in message
    assert torch.all(result.maps == 0)


@pytest.mark.parametrize("name", ["gradcam", "occlusion"])
def test_a_model_blind_to_its_input_gives_flagged_constant_maps(name: str) -> None:
    torch.manual_seed(0)
    images = torch.rand(3, 3, SIZE, SIZE)
    options = {"patch_size": 8, "stride": 8} if name == "occlusion" else {}
    explainer = get_explainer(name, raw(Blind(), "relu"), **options)
    result, caught = explain_recording(explainer, images)
    assert result.degenerate.tolist() == [True, True, True]
    assert len(caught) == 1 and "[0, 1, 2]" in str(caught[0].message)
    # once per explainer: a second call flags again but does not warn again
    again, caught = explain_recording(explainer, images)
    assert again.degenerate.all() and not caught


def test_a_normal_map_is_not_flagged_and_only_the_blank_image_is() -> None:
    images = torch.rand(2, 3, SIZE, SIZE) * 0.8 + 0.1
    backbone = planted_backbone(images)
    explainer = get_explainer("occlusion", backbone, patch_size=4, stride=4)
    result, caught = explain_recording(explainer, images[:1], 0)
    assert not result.degenerate.any() and not caught
    # an image whose planted quadrant is already black: hiding pixels changes nothing
    blank = images.clone()
    blank[1, :, : SIZE // 2, : SIZE // 2] = 0
    result, caught = explain_recording(explainer, blank, 0)
    assert result.degenerate.tolist() == [False, True]
    assert len(caught) == 1 and "image(s) [1]" in str(caught[0].message)
    assert isinstance(backbone.model, PlantedRegion)


def test_relative_tolerance() -> None:
    base = torch.full((1, 4, 4), 1e6)
    noise = torch.zeros(1, 4, 4)
    noise[0, 0, 0] = 1.0  # 1e-6 of the value: rounding-level spread on a constant
    tiny = torch.zeros(1, 4, 4)
    tiny[0, 1, 1] = 1e-12  # a real (if small) map
    maps = torch.cat([base + noise, tiny, torch.zeros(1, 4, 4), torch.rand(1, 4, 4)])
    assert degenerate_maps(maps).tolist() == [True, False, True, False]


def test_explanation_defaults_to_no_degenerate_image() -> None:
    explanation = Explanation(
        maps=torch.zeros(2, 4, 4),
        logits=torch.zeros(2, 3),
        targets=torch.zeros(2, dtype=torch.long),
        forward_passes=1.0,
        backward_passes=0.0,
        method="x",
    )
    assert explanation.degenerate.tolist() == [False, False] and explanation.tail_passes == 0
    with pytest.raises(ValueError, match="degenerate must have shape"):
        Explanation(explanation.maps, explanation.logits, explanation.targets, 1, 0, "x",
                    degenerate=torch.zeros(3, dtype=torch.bool))  # fmt: skip
