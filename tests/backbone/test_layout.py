"""Feature layouts found without the user saying them: maps, channels-last maps, tokens."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lcam
from lcam.backbone.layout import Layout, infer_layout


class ChannelsLast(nn.Module):
    """A conv stage whose output ``stage`` is channels-last ``(B, h, w, C)``, as timm Swin's."""

    def __init__(self, channels: int = 6, fixed: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 4, stride=4)
        self.stage = nn.Identity()
        self.fc = nn.Linear(channels, 3)
        self.fixed = fixed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None:
            torch._assert(x.shape[-1] == self.fixed, "this model runs at one input size only")
        features = self.stage(self.conv(x).permute(0, 2, 3, 1))
        return self.fc(features.mean((1, 2)))


class Tokens(nn.Module):
    """Patch tokens after ``prefix`` learned tokens; the logits read the patch tokens' mean."""

    def __init__(self, prefix: int, patch: int = 8, dim: int = 6, fixed: int | None = None) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.prefix = nn.Parameter(torch.randn(1, prefix, dim))
        self.block = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, 3)
        self.fixed = fixed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None:
            torch._assert(x.shape[-1] == self.fixed, "this model runs at one input size only")
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.prefix.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = self.block(tokens)
        return self.fc(tokens[:, self.prefix.shape[1] :].mean(1))


def test_channels_last_output_becomes_a_grid_and_is_masked_in_place() -> None:
    backbone = lcam.FrozenBackbone(ChannelsLast(), input_size=32, target_layer="stage")
    assert backbone.layouts[0] == Layout("nhwc")
    assert backbone.feature_channels == 6 and backbone.feature_size == (8, 8)
    images = torch.rand(2, 3, 32, 32)
    output = backbone.run(images)
    assert output.features.shape == (2, 8, 8, 6)
    grid = backbone.grid(output.features)
    torch.testing.assert_close(grid, output.features.permute(0, 3, 1, 2))
    attention = torch.zeros(2, 8, 8)
    attention[:, 1, 2] = 1.0
    masked = backbone.mask_features(output.features, attention)
    assert torch.equal(backbone.grid(masked)[:, :, 1, 2], grid[:, :, 1, 2])
    torch.testing.assert_close(backbone.grid(masked).abs().sum(), grid[:, :, 1, 2].abs().sum())
    torch.testing.assert_close(backbone.from_grid(grid, output.features), output.features)


@pytest.mark.parametrize("prefix", [0, 1, 2, 5])
def test_token_outputs_drop_their_prefix_tokens(prefix: int) -> None:
    torch.manual_seed(0)
    backbone = lcam.FrozenBackbone(Tokens(prefix), input_size=32, target_layer="block")
    assert backbone.layouts[0] == Layout("tokens", prefix, (4, 4))
    images = torch.rand(2, 3, 32, 32)
    output = backbone.run(images)
    grid = backbone.grid(output.features)
    # patch token 1 + 2 * 4 + 3 is the cell at row 2, column 3
    torch.testing.assert_close(grid[:, :, 2, 3], output.features[:, prefix + 2 * 4 + 3])
    torch.testing.assert_close(backbone.from_grid(grid, output.features), output.features)
    masked = backbone.mask_features(output.features, torch.zeros(2, 4, 4))
    torch.testing.assert_close(masked[:, :prefix], output.features[:, :prefix])
    assert not masked[:, prefix:].any()
    torch.testing.assert_close(backbone.tail(output.features, output.skips), output.logits)


def test_a_second_probe_settles_a_cube_shaped_map() -> None:
    # (B, 8, 8, 8): both (B, C, h, w) and (B, h, w, C) fit one probe; the model runs at 64 px,
    # where only the spatial dimensions grow.
    backbone = lcam.FrozenBackbone(ChannelsLast(channels=8), input_size=32, target_layer="stage")
    assert backbone.layouts[0] == Layout("nhwc")


def test_an_ambiguous_layout_is_an_error_naming_the_argument() -> None:
    model = ChannelsLast(channels=8, fixed=32)
    with pytest.raises(ValueError, match=r"'stage'.*\(1, 8, 8, 8\).*Pass layout="):
        lcam.FrozenBackbone(model, input_size=32, target_layer="stage")
    backbone = lcam.FrozenBackbone(model, input_size=32, target_layer="stage", layout="nhwc")
    assert backbone.layouts[0] == Layout("nhwc")


def test_ambiguous_prefix_tokens_are_an_error_naming_the_argument() -> None:
    # 17 tokens at 64 px: 1 prefix + 4x4 patches of 16, or 8 prefix + 3x3 patches of 21.
    model = Tokens(prefix=1, patch=16, fixed=64)
    with pytest.raises(ValueError, match=r"1 prefix \+ \(4, 4\), 8 prefix \+ \(3, 3\).*num_prefix"):
        lcam.FrozenBackbone(model, input_size=64, target_layer="block")
    backbone = lcam.FrozenBackbone(model, input_size=64, target_layer="block", num_prefix_tokens=1)
    assert backbone.layouts[0] == Layout("tokens", 1, (4, 4))
    by_grid = lcam.FrozenBackbone(model, input_size=64, target_layer="block", grid=(4, 4))
    assert by_grid.layouts[0] == Layout("tokens", 1, (4, 4))


def test_known_channels_settle_a_single_probe() -> None:
    # (8, 9) and (8, 8) both pass for the grid of a 32 px image (one cell of padding)
    assert infer_layout((1, 8, 8, 9), (32, 32), channels=9) == Layout("nhwc")
    assert infer_layout((1, 8, 8, 9), (32, 32), channels=8) == Layout("nchw")
    with pytest.raises(ValueError, match="both"):
        infer_layout((1, 8, 8, 8), (32, 32))
    assert infer_layout((1, 7, 7, 768), (224, 224)) == Layout("nhwc")
    assert infer_layout((1, 768, 7, 7), (224, 224)) == Layout("nchw")
    assert infer_layout((1, 197, 384), (224, 224)) == Layout("tokens", 1, (14, 14))
    assert infer_layout((1, 12, 6, 384), (96, 48), channels=384) == Layout("nhwc")
    with pytest.raises(ValueError, match="no dimension pair is a grid"):
        infer_layout((1, 6, 197, 64), (224, 224))  # attention heads x tokens x dims


def test_input_size_comes_from_the_model() -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(
        image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16
    )
    nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero
    backbone = lcam.FrozenBackbone(vit)  # no input_size: the model's image_size, not 224
    assert backbone.input_size == 64 and backbone.feature_size == (4, 4)
    images = torch.rand(2, 3, 64, 64)
    # (Grad-CAM is left out: after the last block only the class token reaches the logits, so
    # its gradients on the patch tokens are zero there.)
    for explainer in (lcam.get_explainer("scorecam", backbone), lcam.build_explainer(backbone)):
        maps = explainer.explain(images).maps
        assert maps.shape == (2, 64, 64) and torch.isfinite(maps).all()
    explicit = lcam.FrozenBackbone(vit, input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert explicit.spec["mean"] == [0.5] * 3 and explicit.spec["input_size"] == 64
