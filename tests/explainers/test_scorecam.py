"""Score-CAM and Ablation-CAM: agreement with pytorch-grad-cam, exact weights, pass counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from helpers import PassCounter, tiny_backbone
from pytorch_grad_cam import ScoreCAM as GradCamScoreCAM
from pytorch_grad_cam import score_cam as grad_cam_score_cam
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import lcam.explainers.scorecam as scorecam
from lcam.backbone import FrozenBackbone
from lcam.explainers.registry import EXPLAINERS

SIZE = 32


class IgnoredChannel(nn.Module):
    """conv 3->4, ReLU (the target layer), global average pool, linear 4->3 that ignores
    channel 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv.bias.fill_(0.5)  # channels stay active
            self.fc.weight[:, 2] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def test_registered() -> None:
    assert EXPLAINERS["scorecam"] is scorecam.ScoreCAM
    assert EXPLAINERS["ablationcam"] is scorecam.AblationCAM


@pytest.mark.parametrize("weighting", ["channel_softmax", "probability"])
def test_scorecam_matches_pytorch_grad_cam(weighting: str, monkeypatch) -> None:
    """grad-cam's ScoreCAM = ``weighting="channel_softmax"`` with ``align_corners=True``; our
    default probability weighting equals grad-cam's with a log-softmax target (softmax over the
    channels of log p_k is p_k / sum_j p_j, the same map after normalisation)."""
    monkeypatch.setattr(grad_cam_score_cam.tqdm, "tqdm", lambda iterable, **_: iterable)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    backbone = FrozenBackbone(model, input_size=SIZE, target_layer="layer1")  # 64 x 8 x 8
    images = torch.rand(2, 3, SIZE, SIZE)
    targets = [3, 7]
    ours = scorecam.ScoreCAM(backbone, batch_size=64, weighting=weighting, align_corners=True)
    result = ours.explain(images, targets)

    reference = GradCamScoreCAM(model=backbone, target_layers=[backbone.model.layer1])
    reference.batch_size = 64
    if weighting == "channel_softmax":
        cam_targets = [ClassifierOutputTarget(c) for c in targets]
    else:
        cam_targets = [lambda out, c=c: torch.log_softmax(out, dim=-1)[c] for c in targets]
    expected = reference(input_tensor=images, targets=cam_targets)
    for ours_map, theirs in zip(result.maps.numpy(), expected, strict=True):
        assert np.corrcoef(ours_map.ravel(), theirs.ravel())[0, 1] >= 0.99
        assert np.abs(ours_map - theirs).max() < 1e-4
    assert result.forward_passes == 64 + 1


def test_scorecam_weights_are_masked_probabilities() -> None:
    backbone = tiny_backbone()
    images = torch.rand(2, 3, SIZE, SIZE)
    explainer = scorecam.ScoreCAM(backbone, batch_size=13)
    weights, targets = explainer.measure_weights(images, [1, 4])
    features = backbone.run(images).features
    for b in range(2):
        masks = explainer.channel_masks(features[b], (SIZE, SIZE))  # (C, H, W)
        assert masks.amin(dim=(1, 2)).max() <= 1e-6 and masks.amax() <= 1 + 1e-6
        with torch.no_grad():
            expected = backbone(images[b] * masks[:, None]).softmax(1)[:, targets[b]]
        assert torch.allclose(weights[b], expected, atol=1e-5)
    raw, _, _ = explainer.compute_maps(images, [1, 4])
    assert torch.allclose(raw, torch.einsum("bc,bchw->bhw", weights, features).relu(), atol=1e-5)


def test_ablationcam_ignored_channel_has_zero_weight() -> None:
    torch.manual_seed(1)
    backbone = FrozenBackbone(IgnoredChannel(), input_size=16, target_layer="relu")
    images = torch.rand(3, 3, 16, 16)
    explainer = scorecam.AblationCAM(backbone, batch_size=5)
    weights, targets = explainer.measure_weights(images, [0, 1, 2])
    assert weights.shape == (3, 4)
    assert torch.all(weights[:, 2] == 0)
    assert weights[:, [0, 1, 3]].abs().min() > 1e-4

    # exact values: w_k = (y_c - y_c^(k)) / y_c with channel k zeroed
    output = backbone.run(images)
    for k in range(4):
        ablated = output.features.clone()
        ablated[:, k] = 0
        with torch.no_grad():
            logits = backbone.tail(ablated)
        clean = output.logits[torch.arange(3), targets]
        dropped = logits[torch.arange(3), targets]
        assert torch.allclose(weights[:, k], (clean - dropped) / clean, atol=1e-5)


def test_ablationcam_per_image_targets() -> None:
    backbone = tiny_backbone()
    images = torch.rand(2, 3, SIZE, SIZE)
    explainer = scorecam.AblationCAM(backbone, batch_size=16)
    together = explainer.explain(images, [0, 3])
    assert together.targets.tolist() == [0, 3]
    first = explainer.explain(images[:1], 0).maps
    second = explainer.explain(images[1:], 3).maps
    assert torch.allclose(together.maps, torch.cat([first, second]), atol=1e-5)
    other = explainer.explain(images[1:], 0).maps
    assert not torch.allclose(second, other, atol=1e-3)  # the target matters


@pytest.mark.parametrize(("name", "full_per_image"), [("scorecam", 33), ("ablationcam", 1)])
def test_forward_pass_counts(name: str, full_per_image: int) -> None:
    backbone = tiny_backbone()  # 32 channels at layer4
    images = torch.rand(3, 3, SIZE, SIZE)
    counter = PassCounter(backbone.model.stem[0], backbone.model.fc)
    try:
        result = EXPLAINERS[name](backbone, batch_size=20).explain(images)
    finally:
        counter.remove()
    assert result.forward_passes == backbone.feature_channels + 1 == 33
    assert counter.tail / 3 == 33  # every pass reaches the classifier
    assert counter.full / 3 == full_per_image  # Ablation-CAM's C passes are tail-only
    assert result.backward_passes == 0
