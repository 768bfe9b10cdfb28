"""Small models the peer-parity tests share: one per feature layout, and the wrapper the peer
libraries see (``[0, 1]`` images in, logits out)."""

from __future__ import annotations

import torch
from torch import nn

import lcam
from lcam.backbone import FrozenBackbone

# layout: (timm model, options, input size); tiny so every parity test runs in about a second
TIMM_MODELS = {
    "nhwc": (
        "swin_tiny_patch4_window7_224",
        {"window_size": 3, "depths": (1, 1, 1, 1), "embed_dim": 16, "num_heads": (1, 1, 1, 1)},
        96,
    ),
    "tokens": ("eva02_tiny_patch14_224", {"depth": 2}, 56),
}


class NormalisedModel(nn.Module):
    """What the peer libraries see: ``[0, 1]`` images in, the frozen network's logits out."""

    def __init__(self, backbone: FrozenBackbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.model(self.backbone.normalise(images))


def layout_backbone(layout: str) -> FrozenBackbone:
    """A randomly initialised backbone whose target layer has ``layout`` (``nchw``: resnet18 at
    ``layer3``, 64 px; ``nhwc``: a one-block Swin; ``tokens``: a two-block EVA-02)."""
    torch.manual_seed(0)
    if layout == "nchw":
        backbone = FrozenBackbone("resnet18", num_classes=6, input_size=64, target_layer="layer3")
        with torch.no_grad():  # batch norms that add a bias (fresh ones add none)
            for module in backbone.model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.bias.uniform_(-0.2, 0.2)
                    module.running_mean.uniform_(-0.2, 0.2)
                    module.running_var.uniform_(0.5, 1.5)
        return backbone
    import timm

    name, options, size = TIMM_MODELS[layout]
    network = timm.create_model(name, pretrained=False, num_classes=4, img_size=size, **options)
    backbone = lcam.FrozenBackbone(network.eval(), input_size=size)
    assert backbone.layouts[0].kind == layout
    return backbone


def images_for(backbone: FrozenBackbone, count: int = 2) -> torch.Tensor:
    """``(count, 3, S, S)`` uniform images at the backbone's input size (fixed seed)."""
    size = int(backbone.input_size)
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(1))


def reshape_transform(backbone: FrozenBackbone):  # noqa: ANN201
    """pytorch-grad-cam's ``reshape_transform`` for the backbone's layout (to ``(B, C, h, w)``)."""
    return lambda output: backbone.grid(output)


def assert_close_to_largest(ours: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    """``|ours - expected| <= atol * max |expected|`` (random networks' attributions can be tiny,
    so an absolute tolerance alone could pass on anything)."""
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(ours / scale, expected / scale, atol=atol, rtol=0)
