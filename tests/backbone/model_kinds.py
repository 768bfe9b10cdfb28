"""Small random-weight models of the kinds users bring (built from configs, nothing downloaded),
each with what an expert would hand pytorch-grad-cam for it: the layer and the reshape.

A kind is ``(build, expert_layer, reshape, default_layer, options)``: ``build()`` returns the
user's model, ``expert_layer`` the module an expert gives ``GradCAM`` (for class-token models
the input of the last block's attention, as pytorch-grad-cam's ViT tutorial does),
``reshape`` the hand-written ``reshape_transform``, ``default_layer`` the last feature stage
FrozenBackbone must choose by default and ``options`` extra FrozenBackbone arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import timm
import torch
import torchvision
import transformers
from torch import Tensor, nn


def tokens(prefix: int, side: int) -> Callable[[Tensor], Tensor]:
    """``(B, prefix + side*side, C)`` tokens -> ``(B, C, side, side)``, written by hand."""

    def reshape(output: Tensor) -> Tensor:
        patches = output[:, prefix:, :]
        return patches.reshape(len(output), side, side, -1).permute(0, 3, 1, 2)

    return reshape


class SmallCNN(nn.Module):
    """Three conv stages; ``returns`` picks the forward's result: tensor, dict or tuple."""

    def __init__(self, returns: str = "tensor") -> None:
        super().__init__()
        self.returns = returns
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(24, 10)

    def forward(self, x: Tensor) -> Any:
        features = self.stage2(self.stage1(self.stem(x)))
        logits = self.fc(features.mean((2, 3)))
        if self.returns == "dict":
            return {"features": features, "logits": logits}
        if self.returns == "tuple":
            return logits, features.amax((2, 3))
        if self.returns == "object":
            return type("Result", (), {"scores": logits})()
        return logits


class TwoRoutes(SmallCNN):
    """SmallCNN's three stages, then ``dark`` for a batch darker than the dataset mean, else
    ``bright`` (data-dependent routing, which torch.fx cannot trace)."""

    def __init__(self) -> None:
        super().__init__()
        self.dark = nn.Sequential(nn.Conv2d(24, 24, 3, 1, 1), nn.ReLU())
        self.bright = nn.Sequential(nn.Conv2d(24, 24, 3, 1, 1), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        features = self.stage2(self.stage1(self.stem(x)))
        features = self.dark(features) if x.mean() < 0 else self.bright(features)
        return self.fc(features.mean((2, 3)))


def _hf_vit() -> nn.Module:
    config = transformers.ViTConfig(
        image_size=64, patch_size=16, hidden_size=32, num_hidden_layers=3,
        num_attention_heads=2, intermediate_size=64, num_labels=10,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config)


def _tv_vit() -> nn.Module:
    model = torchvision.models.VisionTransformer(
        image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
        num_classes=10,
    )  # fmt: skip
    nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision starts it at zero
    return model


def _cait() -> nn.Module:
    return timm.models.cait.Cait(
        img_size=64, patch_size=16, embed_dim=48, depth=3, num_heads=2, depth_token_only=1,
        num_classes=10,
    )  # fmt: skip


def _xcit() -> nn.Module:
    return timm.models.xcit.Xcit(
        img_size=64, patch_size=16, embed_dim=48, depth=3, num_heads=2, cls_attn_layers=1,
        num_classes=10,
    )  # fmt: skip


def _levit() -> nn.Module:
    """timm LeViT (a token grid with no class token) at 128 px. Its random initialisation
    zeroes the attention biases and the residual branches' BatchNorm scales, so every token
    of the last stages holds the same features and every map is constant: the biases and the
    BatchNorm affine parameters are re-drawn from a fixed seed, as training would leave them
    (nonzero and position-dependent)."""
    model = timm.create_model("levit_128s", pretrained=False, num_classes=10, img_size=128)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("attention_biases"):
                parameter.normal_(0.0, 3.0, generator=generator)
            elif name.endswith("bn.weight"):
                parameter.uniform_(0.5, 1.5, generator=generator)
            elif name.endswith("bn.bias"):
                parameter.uniform_(-0.2, 0.2, generator=generator)
    return model


def _timm(name: str, **options: Any) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=10, **options)


KINDS: dict[str, tuple[Callable[[], nn.Module], str, Any, str, dict[str, Any]]] = {
    # a stage returning a list of branches: the default is HRNet's own fusion layer
    "hrnet_branches": (
        _timm("hrnet_w18_small"),
        "final_layer",
        None,
        "final_layer",
        {"input_size": 64},
    ),
    # stages returning (x, cls_tokens); class evidence reaches the patches in the last attention
    "pit_tuple_stages": (
        _timm("pit_ti_224", img_size=64),
        "transformers.2.blocks.3.norm1",
        tokens(1, 2),
        "transformers.2.blocks",
        {},
    ),
    "dict_output": (lambda: SmallCNN("dict"), "stage2", None, "stage2", {"input_size": 64}),
    "tuple_output": (lambda: SmallCNN("tuple"), "stage2", None, "stage2", {"input_size": 64}),
    # class-token ViTs from timm (built at another img_size), torchvision and Hugging Face
    "timm_deit3_img_size": (
        _timm("deit3_small_patch16_224", img_size=64),
        "blocks.11.norm1",
        tokens(1, 4),
        "blocks.11",
        {},
    ),
    "torchvision_vit": (
        _tv_vit,
        "encoder.layers.encoder_layer_1.ln_1",
        tokens(1, 4),
        "encoder.layers.encoder_layer_1",
        {},
    ),
    "hf_vit": (_hf_vit, "vit.layers.2.layernorm_before", tokens(1, 4), "vit.layers.2", {}),
    # the class token joins after the patch blocks
    "cait_late_class_token": (_cait, "blocks.2", tokens(0, 4), "blocks.2", {}),
    "xcit_late_class_token": (_xcit, "blocks.2", tokens(0, 4), "blocks.2", {}),
    # a token grid with no class token; LeViT keeps no record of the img_size it was built at
    "levit_no_class_token": (_levit, "stages.2", tokens(0, 2), "stages.2", {"input_size": 128}),
    # data-dependent routing (hook fallback); the default layer is the last one every image
    # passes through (tests/backbone/test_routing.py checks each route)
    "routing": (TwoRoutes, "stage2", None, "stage2", {"input_size": 64}),
    # ends in a 1x1 class-score convolution: the default is the last feature stage before it
    "squeezenet_class_scores": (
        lambda: torchvision.models.squeezenet1_1(num_classes=10),
        "features.12",
        None,
        "features",
        {"input_size": 96},
    ),
}
