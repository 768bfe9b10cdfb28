"""CAM, Grad-CAM, Grad-CAM++ and XGrad-CAM: values against captum and grad-cam, the fast path,
and that the frozen model is left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerGradCam
from helpers import tiny_backbone
from peer_models import NormalisedModel
from pytorch_grad_cam import GradCAM as ReferenceGradCAM
from pytorch_grad_cam import GradCAMPlusPlus as ReferenceGradCAMPlusPlus
from pytorch_grad_cam import XGradCAM as ReferenceXGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision.models.vgg import VGG, cfgs, make_layers

from lcam.backbone import FrozenBackbone
from lcam.explainers.cam import CAM, GradCAM, GradCAMPlusPlus, XGradCAM
from lcam.explainers.registry import get_explainer

CAM_NAMES = ["cam", "gradcam", "gradcampp", "xgradcam"]


def small_vgg11(num_classes: int = 10) -> VGG:
    """torchvision's VGG-11 with a narrow classifier (the 4096-wide one takes seconds to init)."""
    with torch.device("meta"):
        model = VGG(make_layers(cfgs["A"]), num_classes=num_classes, init_weights=False)
    model.features = make_layers(cfgs["A"])
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(),
        nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(),
        nn.Linear(32, num_classes),
    )  # fmt: skip
    return model


@pytest.fixture(scope="module")
def resnet() -> FrozenBackbone:
    torch.manual_seed(0)
    return FrozenBackbone("resnet18", num_classes=10, input_size=64, target_layer="layer4")


@pytest.fixture(scope="module")
def resnet_layer3() -> FrozenBackbone:
    """Split before ``layer4``: the gradients vary over space (on GAP + linear they do not, and
    Grad-CAM, XGrad-CAM and CAM coincide), so the methods can be told apart."""
    torch.manual_seed(0)
    return FrozenBackbone("resnet18", num_classes=10, input_size=64, target_layer="layer3")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    # 96 px gives 3x3 maps at layer4 of a ResNet, 6x6 at layer3
    return torch.rand(3, 3, 96, 96, generator=torch.Generator().manual_seed(1))


def model_state(backbone: FrozenBackbone) -> dict[str, object]:
    """Everything an explainer could leave behind on the frozen network."""
    modules = list(backbone.model.modules())
    return {
        "params": {k: v.clone() for k, v in backbone.model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in backbone.model.parameters()],
        "hooks": [
            (
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(m._backward_pre_hooks),
            )
            for m in modules
        ],  # fmt: skip
        "inplace": [getattr(m, "inplace", None) for m in modules],
        "training": [m.training for m in modules],
    }


def assert_same_state(before: dict[str, object], after: dict[str, object]) -> None:
    assert before.keys() == after.keys()
    for key in before:
        if key == "params":
            for name, value in before[key].items():
                assert torch.equal(value, after[key][name]), name
        else:
            assert before[key] == after[key], key


@pytest.mark.parametrize("layer_name", ["layer3", "layer4"])
def test_gradcam_equals_captum_layer_gradcam(resnet, resnet_layer3, images, layer_name) -> None:
    backbone = resnet if layer_name == "layer4" else resnet_layer3
    targets = torch.tensor([1, 5, 9])
    maps, logits, resolved = GradCAM(backbone).compute_maps(images, targets)
    layer = backbone.model.get_submodule(layer_name)
    reference = LayerGradCam(NormalisedModel(backbone), layer).attribute(
        images, target=targets, relu_attributions=True
    )[:, 0]
    assert maps.shape == reference.shape and not maps.requires_grad
    assert reference.abs().max() > 1e-3  # not a degenerate all-zero comparison
    torch.testing.assert_close(maps, reference.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, NormalisedModel(backbone)(images), rtol=0, atol=1e-5)
    assert resolved.tolist() == [1, 5, 9]


@pytest.mark.parametrize(
    ("name", "reference_class"),
    [
        ("gradcam", ReferenceGradCAM),
        ("gradcampp", ReferenceGradCAMPlusPlus),
        ("xgradcam", ReferenceXGradCAM),
    ],
)
def test_matches_grad_cam_library(resnet_layer3, images, name, reference_class) -> None:
    backbone = resnet_layer3
    explanation = get_explainer(name, backbone).explain(images)  # predicted classes
    layer = backbone.model.get_submodule(backbone.target_layer)
    with reference_class(model=NormalisedModel(backbone), target_layers=[layer]) as reference:
        expected = reference(
            # the frozen model has no trainable parameter: grad-cam needs the input to need grad
            input_tensor=images.clone().requires_grad_(True),
            targets=[ClassifierOutputTarget(int(c)) for c in explanation.targets],
        )
    assert explanation.maps.shape == expected.shape == (3, 96, 96)
    for ours, theirs in zip(explanation.maps.numpy(), expected, strict=True):
        assert ours.std() > 0.05 and theirs.std() > 0.05
        assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] >= 0.999


def test_gradcampp_and_xgradcam_weights_by_hand() -> None:
    """The closed forms on a 1-channel 2x2 example worked out on paper."""
    features = torch.tensor([[[[1.0, 0.0], [2.0, 1.0]]]])  # sum = 4
    gradients = torch.tensor([[[[0.5, -1.0], [0.0, 0.25]]]])
    targets = torch.tensor([0])
    backbone = tiny_backbone()
    # alpha = g^2 / (2 g^2 + 4 g^3): 0.25 / (0.5 + 0.5) = 0.25 at g = 0.5, 1/16 / (1/8 + 1/16)
    # = 1/3 at g = 0.25; weight = 0.25 * 0.5 + (1/3) * 0.25 (g = -1 and g = 0 drop out)
    plus = GradCAMPlusPlus(backbone).channel_weights(features, gradients, targets)
    torch.testing.assert_close(plus, torch.tensor([[0.125 + 0.25 / 3]]), rtol=1e-5, atol=0)
    # sum(F g) / sum(F) = (0.5 + 0 + 0 + 0.25) / 4
    x = XGradCAM(backbone).channel_weights(features, gradients, targets)
    torch.testing.assert_close(x, torch.tensor([[0.1875]]), rtol=1e-6, atol=0)
    grad = GradCAM(backbone).channel_weights(features, gradients, targets)
    torch.testing.assert_close(grad, torch.tensor([[-0.0625]]), rtol=0, atol=1e-7)


def test_cam_is_gradcam_times_the_map_area(resnet, images) -> None:
    targets = torch.tensor([0, 3, 3])
    cam, cam_logits, _ = CAM(resnet).compute_maps(images, targets)
    gradcam, logits, _ = GradCAM(resnet).compute_maps(images, targets)
    assert gradcam.abs().max() > 1e-3
    # dy_c / dF_kij = W_ck / (h w) on global average pooling + linear
    torch.testing.assert_close(cam, gradcam * 9, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cam_logits, logits)
    explanation = CAM(resnet).explain(images, targets)
    torch.testing.assert_close(explanation.maps, GradCAM(resnet).explain(images, targets).maps)
    assert (explanation.forward_passes, explanation.backward_passes) == (1.0, 0.0)


def test_cam_refuses_a_vgg_with_the_reason() -> None:
    vgg = FrozenBackbone(small_vgg11(), input_size=64)
    with pytest.raises(ValueError, match="global average pooling followed by one linear") as info:
        CAM(vgg)
    assert "VGG has MaxPool2d -> AdaptiveAvgPool2d((7, 7))" in str(info.value)
    assert GradCAM(vgg).explain(torch.rand(1, 3, 64, 64)).maps.shape == (1, 64, 64)


class _MeanHead(nn.Module):
    def __init__(self, two_linears: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout()
        self.fc = nn.Linear(4, 4) if two_linears else nn.Identity()
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(self.drop(self.relu(self.conv(x)).mean(dim=(-2, -1)))))


def test_cam_detects_a_spatial_mean_and_rejects_two_linears() -> None:
    backbone = FrozenBackbone(_MeanHead(), input_size=8, target_layer="relu")
    images = torch.rand(2, 3, 8, 8)
    cam, _, _ = CAM(backbone).compute_maps(images, [0, 2])
    gradcam, _, _ = GradCAM(backbone).compute_maps(images, [0, 2])
    torch.testing.assert_close(cam, gradcam * 64, rtol=1e-4, atol=1e-6)
    deeper = FrozenBackbone(_MeanHead(two_linears=True), input_size=8, target_layer="relu")
    with pytest.raises(ValueError, match="_MeanHead has mean -> Dropout -> Linear -> Linear"):
        CAM(deeper)


@pytest.mark.parametrize("name", ["gradcam", "gradcampp", "xgradcam"])
def test_fast_path_equals_full_backward(resnet_layer3, images, name) -> None:
    explainer = get_explainer(name, resnet_layer3)
    targets = torch.tensor([2, 2, 7])
    fast, fast_logits, _ = explainer.compute_maps(images, targets)
    full, full_logits, _ = explainer.compute_maps_full_backward(images, targets)
    assert fast.abs().max() > 1e-3
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast_logits, full_logits, rtol=0, atol=1e-5)
    explanation = explainer.explain(images, targets)
    assert (explanation.forward_passes, explanation.backward_passes) == (1.0, 1.0)


def test_fast_path_backward_never_reaches_the_layers_before_the_target(resnet, images) -> None:
    before_target = [
        module
        for name, module in resnet.model.named_children()
        if name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
    ]
    calls: list[nn.Module] = []

    def watch_gradient(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        # A gradient hook on the output, not a full backward hook: those are refused on modules
        # followed by an in-place ReLU, as torchvision's ResNets are.
        if output.requires_grad:
            output.register_hook(lambda grad: calls.append(module))

    handles = [module.register_forward_hook(watch_gradient) for module in before_target]
    try:
        explainer = GradCAM(resnet)
        explainer.compute_maps(images, 1)
        assert calls == []
        explainer.compute_maps_full_backward(images, 1)
        assert len(calls) >= len(before_target)  # the check itself can see backward calls
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", CAM_NAMES)
def test_per_image_targets(resnet, resnet_layer3, images, name) -> None:
    explainer = get_explainer(name, resnet if name == "cam" else resnet_layer3)
    targets = [4, 0, 8]
    batch = explainer.explain(images, targets)
    assert batch.targets.tolist() == targets
    for index, target in enumerate(targets):
        alone = explainer.explain(images[index : index + 1], target)
        torch.testing.assert_close(batch.maps[index], alone.maps[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(batch.logits[index], alone.logits[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", CAM_NAMES)
def test_model_is_left_unchanged_after_success_and_failure(name, monkeypatch) -> None:
    backbone = tiny_backbone()
    images = torch.rand(2, 3, 32, 32)
    before = model_state(backbone)
    logits = backbone(images)
    explainer = get_explainer(name, backbone)
    explainer.explain(images)
    explainer.compute_maps_full_backward(images, None)
    assert_same_state(before, model_state(backbone))

    def broken_tail(*args: object) -> torch.Tensor:
        raise RuntimeError("tail exploded")

    # the classifier layer raises, however the method reaches it (run, tail or the model)
    monkeypatch.setattr(backbone.model.fc, "forward", broken_tail)
    with pytest.raises(RuntimeError, match="tail exploded"):
        explainer.explain(images)
    monkeypatch.undo()
    assert_same_state(before, model_state(backbone))
    torch.testing.assert_close(backbone(images), logits, rtol=0, atol=0)


def test_works_when_the_caller_disabled_autograd(images) -> None:
    backbone = tiny_backbone()
    small = images[:, :, :32, :32]
    expected = GradCAM(backbone).explain(small).maps
    with torch.inference_mode():
        inside = GradCAM(backbone).explain(small.clone()).maps
    with torch.no_grad():
        torch.testing.assert_close(GradCAM(backbone).explain(small).maps, expected)
    torch.testing.assert_close(inside, expected)
