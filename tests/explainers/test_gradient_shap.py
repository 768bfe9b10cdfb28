"""GradientSHAP equals captum's ``GradientShap`` on the same draws (baselines, path points,
noise), on a CNN and a token EVA-02; draws are reproducible and chunking changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import GradientShap
from peer_draws import captum_noise, captum_shap_draws
from peer_models import NormalisedModel, assert_close_to_largest, images_for, layout_backbone

from lcam.explainers import get_explainer
from lcam.explainers.gradient_shap import ShapSamples


@pytest.mark.parametrize("layout", ["nchw", "tokens"])
def test_matches_captum(layout: str) -> None:
    backbone = layout_backbone(layout)
    images = images_for(backbone)
    references = torch.rand(3, *images.shape[1:], generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([1, 2])
    explainer = get_explainer(
        "gradient_shap", backbone, baselines=references, num_samples=4, stdev=0.1, batch_size=3
    )
    torch.manual_seed(5)
    np.random.seed(6)
    expected = GradientShap(NormalisedModel(backbone)).attribute(
        images, baselines=references, n_samples=4, stdevs=0.1, target=targets
    )
    index, alphas = captum_shap_draws(len(images), samples=4, references=3, seed=6)
    noise = captum_noise(images, samples=4, stdev=0.1, seed=5)
    ours = explainer.attribute(images, targets, ShapSamples(noise, index, alphas))
    assert_close_to_largest(ours, expected, atol=1e-4)


def test_reproducible_chunked_and_counted() -> None:
    backbone = layout_backbone("nchw")
    images = images_for(backbone, 3)
    whole = get_explainer("gradient_shap", backbone, num_samples=5, batch_size=15)
    chunked = get_explainer("gradient_shap", backbone, num_samples=5, batch_size=4)
    first = whole.explain(images, 2)
    torch.testing.assert_close(chunked.explain(images, 2).maps, first.maps, atol=1e-5, rtol=0)
    torch.testing.assert_close(whole.explain(images, 2).maps, first.maps, atol=0, rtol=0)
    assert (first.forward_passes, first.backward_passes) == (6.0, 5.0)
    samples = whole.draw(images)
    assert samples.noise.shape == (5, 3, *images.shape[1:]) and bool((samples.noise == 0).all())
    assert samples.baseline_index.shape == samples.alphas.shape == (5, 3)
