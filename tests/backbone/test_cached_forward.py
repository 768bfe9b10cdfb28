"""A module that caches a result of its eval-mode forward (timm LeViT's attention biases).

Two ways such a cache broke the backbone: after the user ran the model with gradients on, the
cache holds a tensor with a history, which ``copy.deepcopy`` refuses (FrozenBackbone copies the
module's structure); and torch.fx tracing stores a proxy of its graph in the cache, which the
next split (another explainer's view) read as a node of the old graph.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import lcam
from lcam.backbone import FrozenBackbone


class CachedScale(nn.Module):
    """``x * 2 * scale``; in eval mode ``2 * scale`` is computed once per device and kept in a
    dict, as LeViT keeps its attention biases."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, channels).view(1, -1, 1, 1))
        self.cache: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return x * (2 * self.scale)
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = 2 * self.scale
        return x * self.cache[key]


class CachingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), CachedScale(8), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), CachedScale(16), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1), CachedScale(24), nn.ReLU())
        self.fc = nn.Linear(24, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.stage2(self.stage1(self.stem(x))).mean((2, 3)))


def test_a_model_with_a_forward_cache_is_wrapped_and_split_again() -> None:
    model = CachingNet().eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    model(x).sum()  # the user's own run, gradients on: the caches hold tensors with a history
    assert all(
        v.grad_fn is not None for m in model.modules() for v in getattr(m, "cache", {}).values()
    )
    backbone = FrozenBackbone(model, input_size=64)
    expected = model((x - backbone.mean) / backbone.std).detach()
    torch.testing.assert_close(backbone(x), expected, rtol=1e-5, atol=1e-6)
    for head in ("lcam_fm", "tame"):  # each a new split of the network, after it ran
        explanation = lcam.build_explainer(backbone, head).eval().explain(x)
        assert explanation.maps.shape == (2, 64, 64)
        torch.testing.assert_close(explanation.logits, expected, rtol=1e-5, atol=1e-6)
    gradcam = lcam.get_explainer("gradcam", backbone.view("stage1")).explain(x)
    torch.testing.assert_close(gradcam.logits, expected, rtol=1e-5, atol=1e-6)
