"""LayerCAM and HiResCAM equal pytorch-grad-cam's on a CNN, a channels-last Swin and a token
EVA-02 (same model, layer and class), and HiResCAM is the exact position-wise contribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peer_models import NormalisedModel, images_for, layout_backbone, reshape_transform
from pytorch_grad_cam import HiResCAM as ReferenceHiResCAM
from pytorch_grad_cam import LayerCAM as ReferenceLayerCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from lcam.explainers import get_explainer

REFERENCES = {"layercam": ReferenceLayerCAM, "hirescam": ReferenceHiResCAM}


@pytest.fixture(scope="module", params=["nchw", "nhwc", "tokens"])
def backbone(request: pytest.FixtureRequest):  # noqa: ANN201
    return layout_backbone(request.param)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_matches_pytorch_grad_cam(backbone, name: str) -> None:
    images = images_for(backbone)
    targets = [1, 3]
    explainer = get_explainer(name, backbone)
    raw, _, _ = explainer.compute_maps(images, targets)
    explanation = explainer.explain(images, targets)
    layer = backbone.model.get_submodule(backbone.target_layer)
    reference = REFERENCES[name](
        model=NormalisedModel(backbone),
        target_layers=[layer],
        reshape_transform=reshape_transform(backbone),
    )
    with reference:
        # the library's own capture of activations and gradients, then its own formula
        classes = [ClassifierOutputTarget(c) for c in targets]
        inputs = images.clone().requires_grad_(True)
        outputs = reference.activations_and_grads(inputs)
        sum(t(o) for t, o in zip(classes, outputs, strict=True)).backward()
        activations = reference.activations_and_grads.activations[0].numpy()
        gradients = reference.activations_and_grads.gradients[0].numpy()
        expected = reference.get_cam_image(inputs, layer, classes, activations, gradients, False)
        shown = reference(input_tensor=images.clone().requires_grad_(True), targets=classes)
    expected = np.maximum(expected, 0)  # the library's ReLU of each layer's map
    assert raw.shape == expected.shape and (expected > 0).sum() >= 4  # not an all-zero case
    # float32 rounding is relative to the terms summed, which can cancel almost completely
    terms = float(np.abs(activations * gradients).sum(axis=1).max())
    torch.testing.assert_close(raw, torch.from_numpy(expected), atol=1e-6 * terms, rtol=1e-4)
    # end to end: the library resizes each min-max-scaled map; lcam scales after resizing
    for ours, theirs in zip(explanation.maps.numpy(), shown, strict=True):
        assert ours.std() > 0.05 and theirs.std() > 0.05
        assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] >= 0.99


def test_hirescam_is_the_positionwise_contribution() -> None:
    """On GAP + linear, ``y_c = b_c + sum_ij (g * F)_ij``: HiResCAM without ReLU sums to it."""
    backbone = layout_backbone("nchw")
    backbone.retarget("layer4")
    images = images_for(backbone)
    explainer = get_explainer("hirescam", backbone, relu=False)
    maps, logits, targets = explainer.compute_maps(images, [2, 5])
    bias = backbone.model.fc.bias[targets]
    expected = logits.gather(1, targets[:, None])[:, 0] - bias
    torch.testing.assert_close(maps.sum(dim=(1, 2)), expected, rtol=1e-4, atol=1e-4)


def test_layercam_keeps_only_positive_gradients() -> None:
    """By hand on one 2 x 2 channel: ``ReLU(g) * F`` summed over channels, then ReLU."""
    features = torch.tensor([[[[1.0, 2.0], [3.0, -1.0]], [[2.0, 1.0], [1.0, 1.0]]]])
    gradients = torch.tensor([[[[1.0, -1.0], [0.5, 2.0]], [[-1.0, 1.0], [1.0, 0.0]]]])
    explainer = get_explainer("layercam", layout_backbone("nchw"))
    expected = torch.tensor([[[1.0, 1.0], [2.5, 0.0]]])
    torch.testing.assert_close(explainer.maps_from(features, gradients), expected)
    hires = get_explainer("hirescam", explainer.backbone)
    torch.testing.assert_close(
        hires.maps_from(features, gradients), torch.tensor([[[0.0, 0.0], [2.5, 0.0]]])
    )
