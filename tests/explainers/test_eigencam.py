"""EigenCAM equals pytorch-grad-cam's sign-corrected first-component projection on a CNN, a
channels-last Swin and a token EVA-02; without the correction it is the library's EigenCAM map up
to the sign the SVD picks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peer_models import NormalisedModel, images_for, layout_backbone, reshape_transform
from pytorch_grad_cam import EigenCAM as ReferenceEigenCAM
from pytorch_grad_cam.utils.svd_on_activations import (
    get_2d_projection,
    get_2d_projection_with_sign_correction,
)

from lcam.explainers import get_explainer


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "tokens"])
def test_matches_pytorch_grad_cam(layout: str) -> None:
    backbone = layout_backbone(layout)
    images = images_for(backbone)
    explainer = get_explainer("eigencam", backbone, relu=False)
    raw, _, targets = explainer.compute_maps(images, None)
    layer = backbone.model.get_submodule(backbone.target_layer)
    reference = ReferenceEigenCAM(
        NormalisedModel(backbone), [layer], reshape_transform=reshape_transform(backbone)
    )
    with reference, torch.no_grad():
        reference.activations_and_grads(images)  # the library's own capture of the features
        activations = reference.activations_and_grads.activations[0].numpy()
    expected = torch.from_numpy(get_2d_projection_with_sign_correction(activations))
    scale = float(expected.abs().max())
    assert scale > 0 and raw.shape == expected.shape
    torch.testing.assert_close(raw / scale, expected / scale, atol=1e-4, rtol=0)
    # the library's EigenCAM (no sign correction) is the same projection up to the sign
    plain = get_2d_projection(activations)
    unsigned, _, _ = get_explainer(
        "eigencam", backbone, relu=False, sign_correction=False
    ).compute_maps(images, None)
    signs = np.sign((unsigned.numpy() * plain).sum(axis=(1, 2)))[:, None, None]
    np.testing.assert_allclose(unsigned.numpy() * signs / scale, plain / scale, atol=1e-4)
    assert targets.shape == (2,)


def test_map_is_the_same_for_every_class() -> None:
    backbone = layout_backbone("nchw")
    images = images_for(backbone)
    explainer = get_explainer("eigencam", backbone)
    first, second = explainer.explain(images, 0), explainer.explain(images, 4)
    torch.testing.assert_close(first.maps, second.maps)
    assert first.backward_passes == 0
