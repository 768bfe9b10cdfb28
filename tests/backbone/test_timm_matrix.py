"""timm models, small and randomly initialised: what lcam does with them by default.

Each family is built reduced (random weights, 84-96 px) from timm's own constructors; nothing is
passed to :class:`FrozenBackbone` but the module, so every default (input size, normalisation,
target layer, layout, prefix tokens, TAME layers) comes from what the model says about itself.
The layout column is the test's own statement of the default layer's output, used by the
independent reference (captum) and by the planted model.
"""

from __future__ import annotations

import pytest
import torch
from source_checks import (
    check_gradcam_matches_captum,
    check_logits,
    check_one_pass_heads,
    check_planted_peak,
    planted_head,
    to_grid,
)

import lcam
from lcam.backbone import FrozenBackbone
from lcam.backbone.build import describe_model

timm = pytest.importorskip("timm")

SMALL_VIT = {"depth": 3, "embed_dim": 48, "num_heads": 2}
# family: (timm name, reduced kwargs, input size, default-layer layout, prefix tokens)
FAMILIES = {
    "resnet": ("resnet18", {"layers": (1, 1, 1, 1)}, 96, "nchw", 0),
    "resnetv2": (
        "resnetv2_50",
        {"layers": (1, 1, 1, 1), "channels": (32, 64, 128, 256)},
        96,
        "nchw",
        0,
    ),
    "convnext": (
        "convnext_atto",
        {"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)},
        96,
        "nchw",
        0,
    ),
    "efficientnet": ("efficientnet_b0", {}, 96, "nchw", 0),
    "mobilenetv3": ("mobilenetv3_small_050", {}, 96, "nchw", 0),
    "regnet": ("regnetx_002", {}, 96, "nchw", 0),
    "densenet": ("densenet121", {"growth_rate": 8, "block_config": (2, 2, 2, 2)}, 96, "nchw", 0),
    "mobilevit": (
        "mobilevit_xxs",
        {},
        96,
        "nchw",
        0,
    ),
    "vit": ("vit_tiny_patch16_224", SMALL_VIT, 96, "tokens", 1),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", SMALL_VIT, 96, "tokens", 2),
    "vit_registers": ("vit_small_patch16_224", {**SMALL_VIT, "reg_tokens": 4}, 96, "tokens", 5),
    "eva02": ("eva02_tiny_patch14_224", {"depth": 3}, 84, "tokens", 1),
    "beit": ("beit_base_patch16_224", SMALL_VIT, 96, "tokens", 1),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"window_size": 3, "depths": (1, 1, 1, 1), "embed_dim": 16, "num_heads": (1, 1, 1, 1)},
        96,
        "nhwc",
        0,
    ),
}
# Families whose classifier reads the class token only (timm global_pool="token").
CLASS_TOKEN_POOLED = ("vit", "deit_distilled", "vit_registers")
PLANTED_CELL = (1, 2)  # row 1, column 2: a transposed or shifted grid misses it


def build(family: str) -> torch.nn.Module:
    name, kwargs, size, _, _ = FAMILIES[family]
    extra = {"img_size": size} if "embed_dim" in kwargs or "depth" in kwargs else {}
    if family == "swin":
        extra = {"img_size": size}
    torch.manual_seed(0)
    network = timm.create_model(
        name,
        pretrained=False,
        num_classes=5,
        pretrained_cfg_overlay={"input_size": (3, size, size)},
        **kwargs,
        **extra,
    )
    return network.eval()


def images(family: str) -> torch.Tensor:
    size = FAMILIES[family][2]
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def first_conv(network: torch.nn.Module) -> str:
    return next(n for n, m in network.named_modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("family", FAMILIES)
def test_defaults_logits_and_gradcam_against_captum(family):
    network = build(family)
    description = describe_model(network)
    _, _, size, layout, prefix = FAMILIES[family]
    assert description.input_size == (size, size)
    assert description.stage_layers and len(description.stage_layers) >= 3
    assert description.num_prefix_tokens == (prefix if layout == "tokens" else None)
    backbone = FrozenBackbone(network)
    assert backbone.target_layer == description.stage_layers[-1]  # the last stage's output
    x = images(family)
    assert backbone.input_size in (size, (size, size))  # from the model, not 224
    check_logits(backbone, network, x)
    gradcam = lcam.get_explainer("gradcam", backbone)
    if family in CLASS_TOKEN_POOLED:
        # Only the class token of the last block reaches the logits: the gradient CAMs take
        # the input of its attention, where the class evidence reaches the patch tokens.
        assert gradcam.backbone.target_layer == f"{description.stage_layers[-1]}.norm1"
        assert backbone.target_layer == description.stage_layers[-1]  # heads keep theirs
    assert not gradcam.explain(x).degenerate.any()
    check_gradcam_matches_captum(backbone, network, layout, prefix, x)


@pytest.mark.parametrize("family", FAMILIES)
def test_learned_heads_give_one_pass_maps(family):
    network = build(family)
    stages = describe_model(network).stage_layers
    check_one_pass_heads(lambda: FrozenBackbone(network), first_conv(network), images(family))
    tame = FrozenBackbone(network, target_layer=None)
    assert list(tame.default_layers(3)) == stages[-3:]


@pytest.mark.parametrize("family", FAMILIES)
def test_planted_cell_gets_the_gradient_peak(family):
    network = build(family)
    _, _, _, _, prefix = FAMILIES[family]
    x = images(family)
    with torch.no_grad():
        features = network.forward_features(x)
    layout = {3: "tokens", 4: "nhwc" if family == "swin" else "nchw"}[features.dim()]
    channels = to_grid(features, layout, prefix).shape[1]
    planted = planted_head(network, layout, prefix, *PLANTED_CELL, channels)
    check_planted_peak(FrozenBackbone(planted), x, *PLANTED_CELL)
