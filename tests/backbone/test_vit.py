from __future__ import annotations

import torch
from torchvision.models.vision_transformer import VisionTransformer

import lcam
from lcam.explainers.cam import GradCAM
from lcam.heads import build_head, default_tame_layers


def _tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=4,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=5,
    )
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    return model


def test_token_grid_puts_each_patch_at_its_cell() -> None:
    backbone = lcam.FrozenBackbone(_tiny_vit(), input_size=32)
    tokens = torch.zeros(1, 17, 16)
    tokens[0, 0] = 5.0  # class token: dropped
    tokens[0, 1 + 2 * 4 + 3, 7] = 1.0  # patch at row 2, column 3, channel 7
    grid = backbone.grid(tokens)
    assert grid.shape == (1, 16, 4, 4)
    assert grid[0, 7, 2, 3] == 1.0 and grid.sum() == 1.0
    tokens[0, 0, 7] = 3.0
    weighted = backbone.grid(tokens, token_weighting=True)
    assert weighted[0, 7, 2, 3] == 3.0 and weighted.sum() == 3.0


def test_vit_defaults_and_one_pass_tame() -> None:
    model = _tiny_vit()
    backbone = lcam.FrozenBackbone(model, input_size=32)
    assert backbone.target_layer == "encoder.layers.encoder_layer_3"
    assert backbone.feature_channels == 16 and backbone.feature_size == (4, 4)
    assert default_tame_layers(model) == [f"encoder.layers.encoder_layer_{i}" for i in (1, 2, 3)]
    explainer = lcam.build_explainer(backbone, head="tame")
    images = torch.rand(3, 3, 32, 32)
    output, class_maps = explainer.class_maps(images)
    assert class_maps.shape == (3, 5, 4, 4)
    torch.testing.assert_close(output.logits, model.eval()(backbone.normalise(images)))
    assert explainer.explain(images).maps.shape == (3, 32, 32)


def test_lcam_fm_on_tokens_keeps_the_class_token() -> None:
    # After the last encoder layer only the class token reaches the logits, so feature masking
    # needs an earlier layer (or an image-masking head).
    backbone = lcam.FrozenBackbone(
        _tiny_vit(), input_size=32, target_layer="encoder.layers.encoder_layer_2"
    )
    head = build_head("lcam_fm", backbone)
    images = torch.rand(2, 3, 32, 32)
    output = backbone.run(images)
    ones = head.masked_logits(backbone, images, output, torch.ones(2, 4, 4))
    torch.testing.assert_close(ones, output.logits, atol=1e-5, rtol=0)
    zeros = head.masked_logits(backbone, images, output, torch.zeros(2, 4, 4))
    assert not torch.allclose(zeros, output.logits)


def test_gradcam_and_perturbation_explainers_accept_vits() -> None:
    backbone = lcam.FrozenBackbone(_tiny_vit(), input_size=32)
    images = torch.rand(2, 3, 32, 32)
    gradcam = GradCAM(backbone)
    fast, _, _ = gradcam.compute_maps(images, None)
    full, _, _ = gradcam.compute_maps_full_backward(images, None)
    assert fast.shape == (2, 4, 4)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)
    for name, options in [("rise", {"num_masks": 20}), ("scorecam", {}), ("occlusion", {})]:
        maps = lcam.get_explainer(name, backbone, **options).explain(images).maps
        assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()
