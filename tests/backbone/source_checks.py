"""Checks shared by the model-source matrices (timm, Hugging Face): written independently of
lcam's own layout code, so that a wrong reshape in lcam cannot hide behind the same mistake here.

``layout`` is what the test states about a layer's output: ``"nchw"`` ``(B, C, h, w)``, ``"nhwc"``
``(B, h, w, C)`` or ``"tokens"`` ``(B, prefix + h*w, C)`` with patch tokens in row-major order.
"""

from __future__ import annotations

import copy
import math
import types

import torch
from captum.attr import LayerGradCam
from torch import Tensor, nn

import lcam
from lcam.backbone import FrozenBackbone


def to_grid(output: Tensor, layout: str, prefix: int = 0) -> Tensor:
    """A layer output as ``(B, C, h, w)`` (square token grids)."""
    if layout == "nchw":
        return output
    if layout == "nhwc":
        return output.permute(0, 3, 1, 2)
    patches = output[:, prefix:]
    side = math.isqrt(patches.shape[1])
    assert side * side == patches.shape[1], output.shape
    return patches.transpose(1, 2).reshape(len(output), -1, side, side)


def from_grid(grid: Tensor, like: Tensor, layout: str, prefix: int = 0) -> Tensor:
    """Inverse of :func:`to_grid` (prefix tokens taken from ``like``)."""
    if layout == "nchw":
        return grid
    if layout == "nhwc":
        return grid.permute(0, 2, 3, 1)
    return torch.cat([like[:, :prefix], grid.flatten(2).transpose(1, 2)], dim=1)


class GridTap(nn.Module):
    """Runs ``layer`` and passes its output through an identity ``tap`` in grid form."""

    def __init__(self, layer: nn.Module, layout: str, prefix: int) -> None:
        super().__init__()
        self.layer, self.layout, self.prefix = layer, layout, prefix
        self.tap = nn.Identity()

    def forward(self, *args, **kwargs):
        output = self.layer(*args, **kwargs)
        grid = self.tap(to_grid(output, self.layout, self.prefix))
        return from_grid(grid, output, self.layout, self.prefix)


def captum_gradcam(
    network: nn.Module, layer: str, layout: str, prefix: int, inputs: Tensor, targets: Tensor
) -> Tensor:
    """captum ``LayerGradCam`` ``(B, h, w)`` at ``layer`` of a copy of ``network`` (normalised
    ``inputs``), after the grid reshape stated by ``layout``."""
    tapped = copy.deepcopy(network).eval()
    tap = GridTap(tapped.get_submodule(layer), layout, prefix)
    tapped.set_submodule(layer, tap)
    method = LayerGradCam(tapped, tap.tap)
    maps = method.attribute(
        inputs.clone().requires_grad_(True), target=targets.tolist(), relu_attributions=True
    )
    return maps[:, 0].detach()


def count_calls(module: nn.Module) -> list[int]:
    """A one-element counter incremented on every forward of ``module`` (remove via .hook)."""
    counter = [0]

    def hook(*_):
        counter[0] += 1

    counter.append(module.register_forward_hook(hook))  # type: ignore[arg-type]
    return counter


def check_logits(backbone: FrozenBackbone, network: nn.Module, images: Tensor) -> None:
    with torch.no_grad():
        expected = network(backbone.normalise(images))
        torch.testing.assert_close(backbone(images), expected, rtol=1e-4, atol=1e-5)


def check_gradcam_matches_captum(
    backbone: FrozenBackbone, network: nn.Module, layout: str, prefix: int, images: Tensor
) -> Tensor:
    """lcam's Grad-CAM raw maps equal captum's on the same layer; returns the reference."""
    gradcam = lcam.get_explainer("gradcam", backbone)
    targets = torch.tensor([1, 3])[: len(images)]
    maps, _, _ = gradcam.compute_maps(images, targets)
    layer = gradcam.backbone.target_layer  # a class-token model's: the last attention's input
    reference = captum_gradcam(network, layer, layout, prefix, backbone.normalise(images), targets)
    assert maps.shape == reference.shape, (maps.shape, reference.shape)
    scale = reference.abs().max()
    assert scale > 1e-6, "the reference Grad-CAM is all zero: the default layer gets no gradient"
    torch.testing.assert_close(maps / scale, reference / scale, rtol=1e-4, atol=1e-4)
    return reference


def check_one_pass_heads(make_backbone, first_module: str, images: Tensor) -> None:
    """L-CAM-Fm, L-CAM-Img and TAME give ``(B, H, W)`` maps with one pass of the network."""
    for head in ("lcam_fm", "lcam_img", "tame"):
        backbone = make_backbone()
        explainer = lcam.build_explainer(backbone, head).eval()
        counter = count_calls(backbone.model.get_submodule(first_module))
        try:
            with torch.no_grad():
                explanation = explainer.explain(images)
        finally:
            counter[1].remove()
        assert counter[0] == 1, f"{head}: the network's first module ran {counter[0]} times"
        maps = explanation.maps
        assert maps.shape == (len(images), *images.shape[-2:]), (head, maps.shape)
        assert torch.isfinite(maps).all(), head
        if head == "tame":
            assert len(explainer.backbone.target_layers) == 3, explainer.backbone.target_layers
            assert len(backbone.target_layers) == 1  # the explainer's view holds the three


def planted_head(network: nn.Module, layout: str, prefix: int, row: int, col: int, channels: int):
    """Make ``network.forward_head`` read only grid cell ``(row, col)`` of ``forward_features``.

    Every op between the default layer and ``forward_features``' output is per position (norms,
    1x1 convolutions, activations), so the logits depend on that one cell of the default layer.
    """

    def forward_head(self: nn.Module, features: Tensor, pre_logits: bool = False) -> Tensor:
        grid = to_grid(features, layout, prefix)
        return self.planted_linear(grid[:, :, row, col])

    # a bound method reads the network's own (registered) layer, so a copy of the network
    # (FrozenBackbone's) reads the copy's and torch.fx traces it
    network.forward_head = types.MethodType(forward_head, network)
    network.planted_linear = nn.Linear(channels, 5)
    return network


def check_planted_peak(backbone: FrozenBackbone, images: Tensor, row: int, col: int) -> None:
    """The gradient map at the default layer (what every gradient CAM weighs) peaks at the
    planted cell and is zero elsewhere; lcam's grid must put it there."""
    from lcam.explainers.features import feature_pass

    result = feature_pass(backbone, images, 0)
    energy = result.gradients.abs().sum(1)  # (B, h, w)
    flat = energy.flatten(1).argmax(1)
    width = energy.shape[-1]
    assert (flat // width == row).all() and (flat % width == col).all(), energy
    outside = energy.clone()
    outside[:, row, col] = 0
    assert outside.max() <= 1e-6 * energy.max(), "gradient leaked to other cells"
