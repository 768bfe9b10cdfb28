"""Input-gradient explainers: values against captum and by hand, ReLU hooks always cleaned up."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Deconvolution, GuidedBackprop, GuidedGradCam, Saliency
from helpers import tiny_backbone
from test_cam import NormalisedModel, assert_same_state, model_state, small_vgg11
from torch import nn

from lcam.backbone import FrozenBackbone
from lcam.explainers.base import normalise_maps
from lcam.explainers.gradient import GuidedGradCAM, InputGradient, relu_gradient_rule
from lcam.explainers.registry import get_explainer

pytestmark = pytest.mark.filterwarnings(
    "ignore:Input Tensor 0 did not already require gradients:UserWarning",  # captum
    "ignore:Setting backward hooks on ReLU activations:UserWarning",  # captum
)

GRADIENT_NAMES = ["gradient", "guided_backprop", "deconvnet", "guided_gradcam"]
CAPTUM = {
    "gradient": lambda model: Saliency(model),
    "guided_backprop": GuidedBackprop,
    "deconvnet": Deconvolution,
}


@pytest.fixture(scope="module")
def backbones() -> dict[str, FrozenBackbone]:
    torch.manual_seed(0)
    return {
        # torchvision's ResNet calls each block's ReLU module twice
        "resnet18": FrozenBackbone("resnet18", num_classes=10, input_size=64),
        # VGG's ReLUs are built with inplace=True
        "vgg11": FrozenBackbone(small_vgg11(), input_size=64),
    }


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def assert_close_to_scale(ours: torch.Tensor, reference: torch.Tensor, tol: float = 1e-5) -> None:
    """Equal within ``tol`` relative to the largest reference value (gradients can be tiny)."""
    scale = reference.abs().max()
    assert scale > 0
    assert (ours - reference).abs().max() <= tol * scale


@pytest.mark.parametrize("model_name", ["resnet18", "vgg11"])
@pytest.mark.parametrize("name", ["gradient", "guided_backprop", "deconvnet"])
def test_matches_captum(backbones, images, model_name, name) -> None:
    backbone = backbones[model_name]
    targets = torch.tensor([0, 4, 9])
    explainer = get_explainer(name, backbone)
    attributions, _, resolved = explainer.attributions(images, targets)
    options = {"abs": False} if name == "gradient" else {}
    reference = CAPTUM[name](NormalisedModel(backbone)).attribute(
        images.clone(), target=targets, **options
    )
    assert attributions.shape == (3, 3, 64, 64) and resolved.tolist() == [0, 4, 9]
    assert_close_to_scale(attributions, reference)
    explanation = explainer.explain(images, targets)
    expected_maps = normalise_maps(reference.abs().amax(dim=1))
    torch.testing.assert_close(explanation.maps, expected_maps, rtol=0, atol=1e-4)
    assert (explanation.forward_passes, explanation.backward_passes) == (1.0, 1.0)


@pytest.mark.parametrize("model_name", ["resnet18", "vgg11"])
def test_guided_gradcam_matches_captum(backbones, images, model_name) -> None:
    backbone = backbones[model_name]
    targets = torch.tensor([3, 3, 1])
    explainer = GuidedGradCAM(backbone)
    attributions, _, _ = explainer.attributions(images, targets)
    layer = backbone.model.get_submodule(backbone.target_layer)
    reference = GuidedGradCam(NormalisedModel(backbone), layer).attribute(
        images.clone(), target=targets, interpolate_mode="bilinear"
    )
    assert_close_to_scale(attributions, reference)
    explanation = explainer.explain(images, targets)
    assert (explanation.forward_passes, explanation.backward_passes) == (1.0, 2.0)


def test_relu_rules_by_hand() -> None:
    """One ReLU between a 1x1 conv and GAP + linear, with gradients worked out on paper.

    z_0 = x_R - 0.5, z_1 = x_G - 0.5; y_0 = mean relu(z_0) - mean relu(z_1), so the gradient at
    the ReLU output is +1/4 on channel 0 and -1/4 on channel 1 at each of the 2x2 pixels.
    """
    model = nn.Sequential(
        nn.Conv2d(3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)
    )
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])[:, :, None, None])
        model[0].bias.fill_(-0.5)
        model[4].weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.5]]))
    backbone = FrozenBackbone(model, input_size=2, target_layer="1", mean=(0, 0, 0), std=(1, 1, 1))
    images = torch.tensor([[[[0.9, 0.1], [0.7, 0.2]], [[0.8, 0.3], [0.1, 0.6]], [[0.5] * 2] * 2]])
    red_on = (images[0, 0] > 0.5).float() / 4
    green_on = (images[0, 1] > 0.5).float() / 4
    zero, quarter = torch.zeros(2, 2), torch.full((2, 2), 0.25)
    expected = {
        "gradient": torch.stack([red_on, -green_on, zero]),
        "guided_backprop": torch.stack([red_on, zero, zero]),  # negative gradient blocked
        "deconvnet": torch.stack([quarter, zero, zero]),  # forward mask ignored
    }
    for name, gradient in expected.items():
        attributions, _, _ = get_explainer(name, backbone).attributions(images, 0)
        torch.testing.assert_close(attributions[0], gradient, rtol=0, atol=1e-7)
    # guided Grad-CAM: Grad-CAM weights (1/4, -1/4) on F = relu(z), times guided backprop
    features = (images[0, :2] - 0.5).clamp_min(0)
    cam = ((features[0] - features[1]) / 4).clamp_min(0)
    attributions, _, _ = GuidedGradCAM(backbone).attributions(images, 0)
    torch.testing.assert_close(
        attributions[0], expected["guided_backprop"] * cam, atol=1e-7, rtol=0
    )


class _FunctionalReLU(nn.Module):
    def __init__(self, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.activation = activation
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.activation(x) if self.activation is not None else torch.nn.functional.relu(x)
        return self.fc(self.conv2(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("name", ["guided_backprop", "deconvnet", "guided_gradcam"])
def test_refuses_relus_it_cannot_hook(name) -> None:
    functional = FrozenBackbone(_FunctionalReLU(), input_size=8)
    with pytest.raises(ValueError, match=r"_FunctionalReLU applies ReLU as a function \(relu\)"):
        get_explainer(name, functional)
    no_relu = FrozenBackbone(_FunctionalReLU(nn.GELU()), input_size=8)
    with pytest.raises(ValueError, match="_FunctionalReLU has no nn.ReLU modules"):
        get_explainer(name, no_relu)
    # the vanilla gradient needs no hook
    maps = get_explainer("gradient", functional).explain(torch.rand(1, 3, 8, 8)).maps
    assert maps.shape == (1, 8, 8)


@pytest.mark.parametrize("name", GRADIENT_NAMES)
def test_per_image_targets(backbones, images, name) -> None:
    explainer = get_explainer(name, backbones["resnet18"])
    targets = [7, 2, 2]
    batch, _, resolved = explainer.attributions(images, targets)
    assert resolved.tolist() == targets
    for index, target in enumerate(targets):
        alone, _, _ = explainer.attributions(images[index : index + 1], target)
        # guided Grad-CAM multiplies two float32 results: batched convolutions round differently
        assert_close_to_scale(batch[index], alone[0], tol=1e-4)


@pytest.mark.parametrize("name", GRADIENT_NAMES)
def test_model_is_left_unchanged_after_success_and_failure(name, monkeypatch) -> None:
    backbone = tiny_backbone()
    backbone.model.stem[2].inplace = True  # a user's in-place ReLU must stay in-place
    images = torch.rand(2, 3, 32, 32)
    before = model_state(backbone)
    logits = backbone(images)
    explainer = get_explainer(name, backbone)
    explainer.explain(images)
    assert_same_state(before, model_state(backbone))

    def broken_tail(*args: object) -> torch.Tensor:
        raise RuntimeError("tail exploded")

    # the classifier layer raises, however the method reaches it (run, tail or the model)
    monkeypatch.setattr(backbone.model.fc, "forward", broken_tail)
    with pytest.raises(RuntimeError, match="tail exploded"):
        explainer.explain(images)
    monkeypatch.undo()
    assert_same_state(before, model_state(backbone))
    assert backbone.model.stem[2].inplace is True
    torch.testing.assert_close(backbone(images), logits, rtol=0, atol=0)


def test_hooks_are_removed_when_the_block_raises() -> None:
    backbone = tiny_backbone()
    before = model_state(backbone)
    with pytest.raises(KeyError), relu_gradient_rule(backbone, "guided"):
        assert any(len(m._forward_hooks) for m in backbone.model.modules())
        raise KeyError("inside")
    assert_same_state(before, model_state(backbone))


def test_gradient_is_taken_with_respect_to_the_unit_range_image() -> None:
    backbone = tiny_backbone()
    images = torch.rand(2, 3, 32, 32)
    inputs = images.clone().requires_grad_(True)
    backbone(inputs)[:, 1].sum().backward()
    attributions, _, _ = InputGradient(backbone).attributions(images, 1)
    torch.testing.assert_close(attributions, inputs.grad, rtol=0, atol=1e-7)
    assert not images.requires_grad
