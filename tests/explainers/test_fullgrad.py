"""FullGrad equals pytorch-grad-cam's ``FullGrad`` (every Conv2d/BatchNorm2d bias term and the
input-gradient term) on torchvision's ResNet-18 (in-place ReLUs after its batch norms) and on
the TinyResNet."""

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
