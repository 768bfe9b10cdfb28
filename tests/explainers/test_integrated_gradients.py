"""Integrated Gradients equals captum's (same steps, rule and baseline) to 1e-4, on a CNN and a
token EVA-02; completeness holds to 1e-3 at 200 steps; chunking does not change the result."""

from __future__ import annotations

import pytest
import torch
from captum.attr import IntegratedGradients as ReferenceIG
from helpers import tiny_backbone
from peer_models import NormalisedModel, assert_close_to_largest, images_for, layout_backbone

from lcam.explainers import get_explainer
from lcam.explainers.integrated_gradients import quadrature


@pytest.mark.parametrize(
    ("layout", "method"),
    [("nchw", "gausslegendre"), ("nchw", "riemann_trapezoid"), ("tokens", "riemann_middle")],
)
def test_matches_captum(layout: str, method: str) -> None:
    backbone = layout_backbone(layout)
    images = images_for(backbone)
    baseline = torch.full_like(images[0], 0.5)
    explainer = get_explainer(
        "integrated_gradients", backbone, steps=8, method=method, baseline=baseline, batch_size=5
    )
    ours, _, targets = explainer.attributions(images, [1, 2])
    expected = ReferenceIG(NormalisedModel(backbone)).attribute(
        images, baselines=baseline[None], target=targets, n_steps=8, method=method
    )
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)
    # the untrained EVA-02's attributions are ~1e-5: also 1e-4 relative to the largest one
    assert_close_to_largest(ours, expected, atol=1e-4)


def test_completeness_at_200_steps() -> None:
    """``sum A = y_c(x) - y_c(x')`` to 1e-3 on a ReLU network (float64, so the quadrature over
    the ReLU kinks is what errs; measured 6.4e-4)."""
    backbone = tiny_backbone(input_size=32).double()
    images = images_for(backbone).double()
    explainer = get_explainer("integrated_gradients", backbone, steps=200, batch_size=200)
    attributions, logits, targets = explainer.attributions(images, None)
    with torch.no_grad():
        at_baseline = backbone(torch.zeros_like(images)).gather(1, targets[:, None])[:, 0]
    gap = logits.gather(1, targets[:, None])[:, 0] - at_baseline
    assert gap.abs().max() > 0.2  # a real difference to account for
    torch.testing.assert_close(attributions.sum(dim=(1, 2, 3)), gap, atol=1e-3, rtol=0)


def test_chunking_and_pass_counts() -> None:
    backbone = layout_backbone("nchw")
    images = images_for(backbone, 3)
    whole = get_explainer("integrated_gradients", backbone, steps=6, batch_size=18)
    chunked = get_explainer("integrated_gradients", backbone, steps=6, batch_size=4)
    torch.testing.assert_close(
        whole.attributions(images, 1)[0], chunked.attributions(images, 1)[0], atol=1e-6, rtol=0
    )
    explanation = chunked.explain(images, 1)
    assert (explanation.forward_passes, explanation.backward_passes) == (7.0, 6.0)


def test_quadrature_integrates_polynomials() -> None:
    """Gauss-Legendre with n nodes is exact up to degree 2n - 1; the Riemann weights sum to 1,
    except captum's trapezoid (``1/n`` with halved ends), which sums to ``1 - 1/n``."""
    alphas, weights = quadrature(4)
    for degree in range(8):
        torch.testing.assert_close((weights * alphas**degree).sum().item(), 1 / (degree + 1))
    for rule in ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"):
        alphas, weights = quadrature(5, rule)
        total = 1 - 1 / 5 if rule == "riemann_trapezoid" else 1.0
        assert abs(weights.sum().item() - total) < 1e-12 and 0 <= alphas.min() <= alphas.max() <= 1
