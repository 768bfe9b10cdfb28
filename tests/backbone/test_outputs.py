"""Logits from what a model returns: a dict, a tuple, an ``output=`` selector; else refused.

``FrozenBackbone`` reads the logits from a tensor, a ``.logits`` attribute, a dict's
``"logits"`` or a tuple's first element; anything else is refused at construction with a
message naming ``output=``, which takes a key or attribute name, an index or a callable.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import lcam
from lcam.backbone import FrozenBackbone


class Returns(nn.Module):
    """Three conv stages (the last stage has a parameter on the root module, ``gain``);
    ``wrap`` puts the logits into what the forward returns."""

    def __init__(self, wrap: Any) -> None:
        super().__init__()
        self.wrap = wrap
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1), nn.ReLU())
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 24))
        self.fc = nn.Linear(24, 10)

    def logits(self, x: Tensor) -> Tensor:
        features = self.stage2(self.stage1(self.stem(x)))
        return self.fc(features.mean((2, 3)) * self.gain)

    def forward(self, x: Tensor) -> Any:
        return self.wrap(self.logits(x))


class Scores:
    """An object of a research codebase's own, holding the logits as ``scores``."""

    def __init__(self, scores: Tensor) -> None:
        self.scores = scores


WORKS_BY_DEFAULT = {
    "dict": lambda logits: {"features": logits.detach() * 0, "logits": logits},
    "tuple": lambda logits: (logits, logits.softmax(1)),
    "list": lambda logits: [logits, logits.amax(1)],
}
WORKS_WITH_SELECTOR = {
    "key": (lambda logits: {"probs": logits.softmax(1), "scores": logits}, "scores"),
    "attribute": (Scores, "scores"),
    "index": (lambda logits: (logits.softmax(1), logits), 1),
    "callable": (lambda logits: {"out": [Scores(logits)]}, lambda out: out["out"][0].scores),
}


def images() -> Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def check_logits_and_maps(model: Returns, backbone: FrozenBackbone) -> None:
    """The backbone's logits are the model's; Grad-CAM and TAME give non-degenerate maps."""
    x = images()
    with torch.no_grad():
        expected = model.logits((x - backbone.mean) / backbone.std)
    torch.testing.assert_close(backbone(x), expected, rtol=1e-5, atol=1e-6)
    assert backbone.target_layer == "stage2"
    assert set(backbone.model.state_dict()) == set(model.state_dict())  # the model's own names
    for explainer in (
        lcam.get_explainer("gradcam", backbone),
        lcam.build_explainer(backbone, "tame"),
    ):
        explanation = explainer.explain(x)
        assert explanation.maps.shape == (2, 64, 64) and not explanation.degenerate.any()
        torch.testing.assert_close(explanation.logits, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", WORKS_BY_DEFAULT)
def test_dict_tuple_and_list_outputs_work_by_default(kind: str) -> None:
    model = Returns(WORKS_BY_DEFAULT[kind]).eval()
    check_logits_and_maps(model, FrozenBackbone(model, input_size=64))


@pytest.mark.parametrize("kind", WORKS_WITH_SELECTOR)
def test_an_output_selector_reads_the_logits(kind: str) -> None:
    wrap, selector = WORKS_WITH_SELECTOR[kind]
    model = Returns(wrap).eval()
    check_logits_and_maps(model, FrozenBackbone(model, input_size=64, output=selector))


@pytest.mark.parametrize("kind", ["key", "attribute"])
def test_an_unknown_output_is_refused_at_construction_naming_output(kind: str) -> None:
    model = Returns(WORKS_WITH_SELECTOR[kind][0]).eval()
    with pytest.raises(ValueError, match=r"no logits tensor.*Pass output= to FrozenBackbone"):
        FrozenBackbone(model, input_size=64)


def test_a_selector_that_finds_nothing_is_refused_naming_it() -> None:
    model = Returns(WORKS_WITH_SELECTOR["key"][0]).eval()
    with pytest.raises(ValueError, match=r"with output='logit', in which no logits tensor"):
        FrozenBackbone(model, input_size=64, output="logit")
    with pytest.raises(ValueError, match=r"with output=5"):
        FrozenBackbone(Returns(WORKS_BY_DEFAULT["tuple"]).eval(), input_size=64, output=5)


def test_a_wrapped_model_moves_dtype_with_its_root_parameters() -> None:
    """The wrapper adopts the model's root parameter (``gain``): ``.double()`` converts the
    tensor the model's own forward reads, so the float64 logits are the model's."""
    model = Returns(WORKS_BY_DEFAULT["dict"]).eval()
    backbone = FrozenBackbone(model, input_size=64).double()
    x = images().double()
    with torch.no_grad():
        expected = model.double().logits((x - backbone.mean) / backbone.std)
    logits = backbone(x)
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-12)
