"""Default target layer (last stage output) and TAME layers (last three stages) per family."""

from __future__ import annotations

import pytest
import torch
import torchvision

import lcam
from lcam.heads import default_tame_layers

# family: (torchvision name, default target layer, layout, TAME layers); random weights, 64 px.
FAMILIES = {
    "resnet": ("resnet18", "layer4", "nchw", ["layer2", "layer3", "layer4"]),
    "vgg": ("vgg11", "features.19", "nchw", ["features.10", "features.15", "features.20"]),
    "mobilenet_v3": (
        "mobilenet_v3_small",
        "features",
        "nchw",
        ["features.3", "features.8", "features.12"],
    ),
    "efficientnet": (
        "efficientnet_b0",
        "features",
        "nchw",
        ["features.3", "features.5", "features.8"],
    ),
    "convnext": ("convnext_tiny", "features.7", "nchw", ["features.3", "features.5", "features.7"]),
    "densenet": (
        "densenet121",
        "features.norm5",
        "nchw",
        ["features.denseblock2", "features.denseblock3", "features.norm5"],
    ),
    "regnet": (
        "regnet_y_400mf",
        "trunk_output.block4",
        "nchw",
        ["trunk_output.block2", "trunk_output.block3", "trunk_output.block4"],
    ),
    "swin": ("swin_t", "features.7", "nhwc", ["features.3", "features.5", "features.7"]),
    "shufflenet": ("shufflenet_v2_x0_5", "conv5", "nchw", ["stage2", "stage3", "conv5"]),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_torchvision_family_defaults(family: str) -> None:
    name, target, layout, tame = FAMILIES[family]
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=5)
    if family == "vgg":  # its 100M-parameter classifier is beside the point here
        model.classifier = torch.nn.Linear(512 * 7 * 7, 5)
    backbone = lcam.FrozenBackbone(model, input_size=64)
    assert backbone.target_layer == target
    assert backbone.layouts[0].kind == layout
    # the last stage, not a pooled or 1x1 map (VGG: conv5_3's ReLU, before pool5)
    assert backbone.feature_size == ((4, 4) if family == "vgg" else (2, 2))
    assert backbone.default_layers(3) == tame
    explainer = lcam.build_explainer(backbone, head="tame")
    assert backbone.target_layers == (target,)  # the explainer splits its own view
    backbone = explainer.backbone
    assert backbone.target_layers == tuple(tame)
    assert backbone.layer_sizes == ((8, 8), (4, 4), (2, 2))  # three stages, fine to coarse
    images = torch.rand(1, 3, 64, 64)
    output, class_maps = explainer.class_maps(images)
    assert class_maps.shape == (1, 5, 8, 8)
    torch.testing.assert_close(output.logits, model.eval()(backbone.normalise(images)))


def test_vit_defaults_are_its_last_encoder_layers() -> None:
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=8, mlp_dim=16
    )
    backbone = lcam.FrozenBackbone(vit)
    assert backbone.input_size == 32
    assert backbone.target_layer == "encoder.layers.encoder_layer_3"
    assert backbone.layouts[0] == lcam.backbone.Layout("tokens", 1, (4, 4))
    last_three = [f"encoder.layers.encoder_layer_{i}" for i in (1, 2, 3)]
    assert backbone.default_layers(3) == default_tame_layers(vit) == last_three


def test_transformer_blocks_without_a_known_class_are_found_by_the_survey() -> None:
    """A ViT-like module lcam knows nothing about: the default layer is the last block's output
    (not a module inside attention), TAME's layers its last three blocks."""

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
            self.mlp = torch.nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(x, x, x, need_weights=False)[0]
            return x + self.mlp(x)

    class TinyViT(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch_embed = torch.nn.Conv2d(3, 8, 8, stride=8)
            self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 8))
            self.num_prefix_tokens = 1
            self.blocks = torch.nn.Sequential(*[Block() for _ in range(4)])
            self.norm = torch.nn.LayerNorm(8)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
            tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
            return self.head(self.norm(self.blocks(tokens))[:, 0])

    backbone = lcam.FrozenBackbone(TinyViT(), input_size=32)
    assert backbone.target_layer == "blocks"  # the container's output: that of blocks.3
    assert backbone.layouts[0] == lcam.backbone.Layout("tokens", 1, (4, 4))
    assert backbone.default_layers(3) == ["blocks.1", "blocks.2", "blocks.3"]
