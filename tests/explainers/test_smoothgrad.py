"""SmoothGrad and VarGrad equal captum's ``NoiseTunnel`` on the same noise (over the vanilla
gradient on a channels-last Swin, over Integrated Gradients on a CNN); the noise is batched,
chunked and reproducible."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
from peer_draws import captum_noise
from peer_models import NormalisedModel, assert_close_to_largest, images_for, layout_backbone

from lcam.explainers import get_explainer


@pytest.mark.parametrize(
    ("layout", "method", "aggregate"),
    [("nhwc", "gradient", "smoothgrad"), ("nhwc", "gradient", "vargrad"),
     ("nchw", "integrated_gradients", "smoothgrad")],
)  # fmt: skip
def test_matches_captum_noise_tunnel(layout: str, method: str, aggregate: str) -> None:
    backbone = layout_backbone(layout)
    images = images_for(backbone)
    targets = torch.tensor([1, 2])
    options = {"steps": 4} if method == "integrated_gradients" else {}
    explainer = get_explainer(
        "smoothgrad", backbone, method=method, num_samples=3, stdev=0.2,
        aggregate=aggregate, batch_size=4, method_options=options,
    )  # fmt: skip
    model = NormalisedModel(backbone)
    if method == "gradient":
        peer, extra = Saliency(model), {"abs": False}
    else:
        peer, extra = IntegratedGradients(model), {"n_steps": 4, "baselines": 0.0}
    torch.manual_seed(7)
    expected = NoiseTunnel(peer).attribute(
        images, nt_type=aggregate, nt_samples=3, stdevs=0.2, target=targets, **extra
    )
    noise = captum_noise(images, samples=3, stdev=0.2, seed=7)
    ours, _, _ = explainer.attributions(images, targets, noise=noise)
    assert_close_to_largest(ours, expected, atol=1e-4)


def test_batched_chunked_and_reproducible() -> None:
    backbone = layout_backbone("nchw")
    images = images_for(backbone, 3)
    whole = get_explainer("smoothgrad", backbone, num_samples=4, batch_size=12, seed=3)
    chunked = get_explainer("smoothgrad", backbone, num_samples=4, batch_size=5, seed=3)
    first = whole.explain(images, 1)
    torch.testing.assert_close(chunked.explain(images, 1).maps, first.maps, atol=1e-5, rtol=0)
    torch.testing.assert_close(whole.explain(images, 1).maps, first.maps, atol=0, rtol=0)
    assert (first.forward_passes, first.backward_passes) == (5.0, 4.0)
    other = get_explainer("smoothgrad", backbone, num_samples=4, seed=4).explain(images, 1)
    assert not torch.allclose(other.maps, first.maps)
    plain = get_explainer("gradient", backbone).explain(images, 1).maps
    noiseless = get_explainer("smoothgrad", backbone, num_samples=2, stdev=0.0)
    torch.testing.assert_close(noiseless.explain(images, 1).maps, plain, atol=1e-5, rtol=0)


def test_refuses_a_method_without_pixel_attributions() -> None:
    with pytest.raises(ValueError, match="no per-pixel attributions"):
        get_explainer("smoothgrad", layout_backbone("nchw"), method="gradcam")
