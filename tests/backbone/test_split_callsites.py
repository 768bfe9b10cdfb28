"""Targets that are call sites (a module the forward calls twice) or torch.fx node names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lcam


class SharedActivation(nn.Module):
    """EfficientNet-Lite's pattern: one activation module applied to the stem and the head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.head = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self._swish = nn.SiLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._swish(self.stem(x))
        x = self._swish(self.head(x) + 0.5)
        return self.fc(self.pool(x).flatten(1))


def _outputs_of(module: nn.Module, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: outputs.append(o.detach().clone()))
    try:
        model(x)
    finally:
        handle.remove()
    return outputs


def test_the_default_layer_of_a_twice_called_module_is_its_last_call() -> None:
    torch.manual_seed(0)
    model = SharedActivation().eval()
    backbone = lcam.FrozenBackbone(model, input_size=32)
    assert backbone.target_layer == "_swish#1"
    assert backbone.feature_size == (8, 8) and backbone.feature_channels == 6
    images = torch.rand(2, 3, 32, 32)
    output = backbone.run(images)
    first, second = _outputs_of(model._swish, model, backbone.normalise(images))
    torch.testing.assert_close(output.features, second)
    torch.testing.assert_close(output.logits, model(backbone.normalise(images)))
    assert lcam.get_explainer("gradcam", backbone).explain(images).maps.shape == (2, 32, 32)
    early = lcam.FrozenBackbone(model, input_size=32, target_layer="_swish#0")
    torch.testing.assert_close(early.run(images).features, first)
    torch.testing.assert_close(early.tail(*early.body(images)), output.logits)


def test_naming_a_twice_called_module_asks_for_a_call_site() -> None:
    with pytest.raises(ValueError, match=r"called 2 times.*'_swish#0' \.\. '_swish#1'"):
        lcam.FrozenBackbone(SharedActivation(), input_size=32, target_layer="_swish")
    with pytest.raises(ValueError, match="runs 2 times"):
        lcam.FrozenBackbone(SharedActivation(), input_size=32, target_layer="_swish#2")


def test_a_graph_node_can_be_the_target() -> None:
    torch.manual_seed(0)
    model = SharedActivation().eval()
    backbone = lcam.FrozenBackbone(model, input_size=32, target_layer="add")  # head(x) + 0.5
    images = torch.rand(2, 3, 32, 32)
    output = backbone.run(images)
    head = _outputs_of(model.head, model, backbone.normalise(images))[0]
    torch.testing.assert_close(output.features, head + 0.5)
    torch.testing.assert_close(output.logits, model(backbone.normalise(images)))


def test_nested_targets_are_refused() -> None:
    model = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )
    with pytest.raises(ValueError, match="'0' contains target layer '0.1'"):
        lcam.FrozenBackbone(model, input_size=16, target_layer=["0.1", "0"])


def test_the_split_output_can_be_captured_by_call_site() -> None:
    torch.manual_seed(0)
    model = SharedActivation().eval()
    backbone = lcam.FrozenBackbone(model, input_size=32)
    images = torch.rand(2, 3, 32, 32)
    with backbone.capture_split_output() as outputs:  # the backbone runs its own copy
        backbone.model(backbone.normalise(images))
    assert len(outputs) == 1
    torch.testing.assert_close(outputs[0], backbone.run(images).features)
