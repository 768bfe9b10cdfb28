"""Models users bring, one of each kind (tests/backbone/model_kinds.py): right by default.

For each kind: the logits are the model's; the default layer is the last feature stage;
Grad-CAM at the defaults equals pytorch-grad-cam's ``GradCAM`` at the layer and with the
``reshape_transform`` an expert writes by hand (correlation >= 0.999 per image, after min-max);
TAME and L-CAM-Fm give maps of the input size from one pass; no map is degenerate. Trivial
answers are checked to fail the same correlation bar (a constant map cannot correlate, a
centre prior does not reach 0.999), so the bar is one only the right map clears.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from model_kinds import KINDS
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

import lcam
from lcam.backbone import FrozenBackbone
from lcam.backbone.outputs import select_logits

BAR = 0.999


class Normalised(nn.Module):
    """The user's model behind the backbone's normalisation, returning the logits tensor (the
    wrapper an expert writes for pytorch-grad-cam)."""

    def __init__(self, model: nn.Module, backbone: FrozenBackbone) -> None:
        super().__init__()
        self.model, self.mean, self.std = model, backbone.mean, backbone.std

    def forward(self, x: Tensor) -> Tensor:
        output = self.model((x - self.mean) / self.std)
        return output["logits"] if isinstance(output, dict) else select_logits(output)


def correlation(a: Tensor, b: Tensor) -> Tensor:
    """Per-image Pearson correlation of ``(B, H, W)`` maps, after min-max."""
    a, b = (m.flatten(1).double() for m in (a, b))
    a = (a - a.min(1, keepdim=True).values) / (a.amax(1, keepdim=True) - a.amin(1, keepdim=True))
    b = (b - b.min(1, keepdim=True).values) / (b.amax(1, keepdim=True) - b.amin(1, keepdim=True))
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-12)


def images(size: tuple[int, int], dark_and_bright: bool = False) -> Tensor:
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    if dark_and_bright:  # one image per route of the routed model
        x = torch.stack([x[0] * 0.02, 0.9 + 0.1 * x[1]])
    return x


def reference_gradcam(model, backbone, layer, reshape, x, targets) -> Tensor:
    expert = Normalised(model, backbone).eval()
    with GradCAM(expert, [model.get_submodule(layer)], reshape_transform=reshape) as cam:
        maps = cam(x.clone(), [ClassifierOutputTarget(int(t)) for t in targets])
    return torch.from_numpy(maps)


@pytest.mark.parametrize("kind", KINDS)
def test_model_kind_is_right_by_default(kind: str) -> None:
    build, layer, reshape, default_layer, options = KINDS[kind]
    torch.manual_seed(0)
    model = build().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the routed model's fallback notice
        backbone = FrozenBackbone(model, **options)
    assert backbone.target_layer == default_layer
    x = images(backbone.input_hw, dark_and_bright=kind == "routing")
    with torch.no_grad():
        expected = Normalised(model, backbone)(x)
    torch.testing.assert_close(backbone(x), expected, rtol=1e-4, atol=1e-5)

    with warnings.catch_warnings():
        warnings.simplefilter("error", lcam.explainers.base.DegenerateMapWarning)
        explanation = lcam.get_explainer("gradcam", backbone).explain(x)
    assert not explanation.degenerate.any()
    reference = reference_gradcam(model, backbone, layer, reshape, x, explanation.targets)
    assert (correlation(explanation.maps, reference) >= BAR).all(), kind
    size = x.shape[-2:]
    centre = torch.ones(2, *size)
    centre[:, size[0] // 4 : 3 * size[0] // 4, size[1] // 4 : 3 * size[1] // 4] = 2
    assert not (correlation(centre, reference) >= BAR).any()  # a prior does not clear the bar
    assert (
        torch.isnan(correlation(torch.ones(2, *size), reference)).all()
        or not (correlation(torch.ones(2, *size), reference) >= BAR).any()
    )

    for head in ("lcam_fm", "tame"):
        explainer = lcam.build_explainer(backbone, head).eval()
        calls: list[int] = []
        first = next(m for m in backbone.model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
        handle = first.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        try:
            result = explainer.explain(x)
        finally:
            handle.remove()
        assert len(calls) == 1, (head, len(calls))  # one pass of the network
        assert result.maps.shape == (2, *size) and not result.degenerate.any(), head
        torch.testing.assert_close(result.logits, expected, rtol=1e-4, atol=1e-5)
