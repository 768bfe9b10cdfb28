"""Data-dependent routing (the hook fallback): TAME is right on both routes by default, and a
hand-given layer that only one route calls is refused at construction with the reason.

The model sends dark images through one module and bright ones through another, after three
stages every image passes through; torch.fx cannot trace it, so the backbone splits it with
forward hooks. Each route's features are checked against the user's model run by hand.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from model_kinds import TwoRoutes
from torch import Tensor, nn

import lcam
from lcam.backbone import FrozenBackbone

ROUTES = {"dark": 0.1, "bright": 0.9}  # image = offset + 0.1 * noise


def images(route: str) -> Tensor:
    noise = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    return ROUTES[route] + 0.1 * noise


def backbone_of(model: nn.Module, **options: object) -> FrozenBackbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the hook fallback's notice
        return FrozenBackbone(model, input_size=64, **options)


def by_hand(model: nn.Module, x: Tensor, layers: tuple[str, ...]) -> tuple[list[Tensor], Tensor]:
    """The outputs of ``layers`` and the logits of the user's model on normalised ``x``."""
    outputs: dict[str, Tensor] = {}
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, out)
        )
        for name in layers
    ]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return [outputs[name] for name in layers], logits


@pytest.mark.parametrize("route", ROUTES)
def test_tame_is_right_on_both_routes_by_default(route: str) -> None:
    model = TwoRoutes().eval()
    backbone = backbone_of(model)
    explainer = lcam.build_explainer(backbone, "tame").eval()
    layers = explainer.backbone.target_layers
    assert set(layers).isdisjoint({"dark", "bright"})  # layers every image passes through
    x = images(route)
    normalised = (x - backbone.mean) / backbone.std
    assert (normalised.mean() < 0) == (route == "dark")  # the batch takes this route
    expected_layers, expected_logits = by_hand(model, normalised, layers)

    output = explainer.backbone.run(x)
    for name, got, expected in zip(layers, output.layers, expected_layers, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(output.logits, expected_logits, rtol=1e-5, atol=1e-6)
    explanation = explainer.explain(x)
    assert explanation.maps.shape == (2, 64, 64) and not explanation.degenerate.any()
    torch.testing.assert_close(explanation.logits, expected_logits, rtol=1e-5, atol=1e-6)
    gradcam = lcam.get_explainer("gradcam", backbone).explain(x)
    assert not gradcam.degenerate.any()


@pytest.mark.parametrize(
    "layers", ["dark", ["stage1", "stage2", "bright"]], ids=["one layer", "tame layers"]
)
def test_a_layer_one_route_calls_is_refused_at_construction(layers: str | list[str]) -> None:
    with pytest.raises(ValueError, match=r"did not run .*data-dependent routing.*target_layer="):
        backbone_of(TwoRoutes().eval(), target_layer=layers)
