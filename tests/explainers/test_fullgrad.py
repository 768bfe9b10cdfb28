"""FullGrad equals pytorch-grad-cam's ``FullGrad`` (every Conv2d/BatchNorm2d bias term and the
input-gradient term) on torchvision's ResNet-18 (in-place ReLUs after its batch norms) and on
the TinyResNet; on a token EVA-02, where pytorch-grad-cam sees only the patch embedding, it
equals FullGrad written out directly with every Linear/LayerNorm bias term on the patch grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_backbone
from peer_models import NormalisedModel, images_for, layout_backbone
from pytorch_grad_cam import FullGrad as ReferenceFullGrad
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from lcam.explainers import get_explainer
from lcam.explainers.fullgrad import bias_layers, effective_bias


@pytest.mark.parametrize("model", ["resnet18", "tiny"])
def test_matches_pytorch_grad_cam(model: str) -> None:
    if model == "resnet18":
        backbone = layout_backbone("nchw")
    else:
        backbone = tiny_backbone(num_classes=5, input_size=32)
    images = images_for(backbone)
    targets = [1, 3]
    ours = get_explainer("fullgrad", backbone).explain(images, targets).maps
    with ReferenceFullGrad(NormalisedModel(backbone), []) as reference:
        expected = reference(
            input_tensor=images.clone().requires_grad_(True),
            targets=[ClassifierOutputTarget(c) for c in targets],
        )
    assert len(reference.bias_data) == len(bias_layers(backbone.model)) > 5
    assert ours.shape == expected.shape and expected.std() > 0.05
    np.testing.assert_allclose(ours.numpy(), expected, atol=2e-3)


def test_batch_norm_bias_is_what_it_adds_in_eval_mode() -> None:
    norm = torch.nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    zero_input = torch.zeros(1, 3, 1, 1)
    torch.testing.assert_close(effective_bias(norm), norm(zero_input).flatten())


def _token_reference(backbone, images: torch.Tensor, targets: list[int]) -> torch.Tensor:  # noqa: ANN001
    """FullGrad on a token model written out directly: every Linear/LayerNorm (and the patch
    embedding's Conv2d) output keeps its gradient; each bias term is read on the patch grid by
    slicing off the class token and reshaping by hand."""
    model, layout = backbone.model, backbone.layouts[0]
    (grid_h, grid_w), prefix = layout.grid, layout.num_prefix_tokens
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep(module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if output.dim() == 4 or (output.dim() == 3 and output.shape[1] == prefix + grid_h * grid_w):
            output.retain_grad()
            kept.append((module.bias.detach(), output))

    kinds = (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Conv2d)
    handles = [
        m.register_forward_hook(keep)
        for m in model.modules()
        if isinstance(m, kinds) and m.bias is not None
    ]
    with torch.enable_grad():
        inputs = images.clone().requires_grad_(True)
        logits = model(backbone.normalise(inputs))
        logits[torch.arange(len(targets)), targets].sum().backward()
    for handle in handles:
        handle.remove()

    def normalised_sum(terms: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, H, W)
        low = terms.amin(dim=(2, 3), keepdim=True)
        high = (terms - low).amax(dim=(2, 3), keepdim=True)
        summed = ((terms - low) / (high + 1e-7)).sum(dim=1, keepdim=True)
        return torch.nn.functional.interpolate(
            summed, size=images.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0]

    total = normalised_sum((inputs.grad * images).abs())
    for bias, output in kept:
        if output.dim() == 4:
            terms = (bias[None, :, None, None] * output.grad).abs()
        else:
            patches = (bias * output.grad).abs()[:, prefix:]  # (B, h*w, C)
            terms = patches.permute(0, 2, 1).reshape(len(images), -1, grid_h, grid_w)
        total = total + normalised_sum(terms)
    return total, len(kept)


def test_token_model_takes_every_linear_and_layer_norm_bias_on_the_patch_grid() -> None:
    """On a token EVA-02 the map is the input term plus the patch embedding's and every
    token-sequence Linear/LayerNorm bias term (class token dropped), as written out directly;
    pytorch-grad-cam's FullGrad sees only the patch embedding there, so it is no reference."""
    backbone = layout_backbone("tokens")
    with torch.no_grad():  # biases that add something (timm initialises them to 0)
        for module in backbone.model.modules():
            if (
                isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm))
                and module.bias is not None
            ):
                module.bias.uniform_(-0.2, 0.2)
    images = images_for(backbone)
    targets = [1, 3]
    explainer = get_explainer("fullgrad", backbone)
    raw, _, _ = explainer.compute_maps(images, targets)
    expected, terms = _token_reference(backbone, images, targets)
    assert terms == 11  # the patch embedding; per block 5 Linear and LayerNorm layers
    assert expected.std() > 0.05
    torch.testing.assert_close(raw, expected, atol=1e-4, rtol=1e-5)
    with ReferenceFullGrad(NormalisedModel(backbone), []) as reference:
        assert len(reference.bias_data) == 1  # the patch embedding's Conv2d only
