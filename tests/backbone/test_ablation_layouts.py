"""Ablation-CAM removes a channel in the layer's own layout (channels-last, tokens), not dim 1.

The reference ablates channel ``k`` directly in the raw activations (``F[..., k] = 0``, the last
dimension for channels-last maps and token sequences) and resumes the model's tail from there;
Ablation-CAM's weights ``(clean - ablated) / clean`` must match it channel by channel.
"""

from __future__ import annotations

import pytest
import torch

import lcam

timm = pytest.importorskip("timm")

MODELS = {
    "nhwc": (
        "swin_tiny_patch4_window7_224",
        {"window_size": 3, "depths": (1, 1, 1, 1), "embed_dim": 16, "num_heads": (1, 1, 1, 1)},
        96,
    ),
    "tokens": ("eva02_tiny_patch14_224", {"depth": 2}, 56),
}


@pytest.mark.parametrize("layout", sorted(MODELS))
def test_ablation_cam_ablates_channels_in_the_layers_own_layout(layout: str) -> None:
    name, options, size = MODELS[layout]
    torch.manual_seed(0)
    network = timm.create_model(name, pretrained=False, num_classes=4, img_size=size, **options)
    backbone = lcam.FrozenBackbone(network.eval(), input_size=size)
    assert backbone.layouts[0].kind == layout
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    explainer = lcam.get_explainer("ablationcam", backbone, batch_size=64)
    weights, targets = explainer.measure_weights(images)

    with torch.no_grad():
        output = backbone.run(images)
        features = output.features
        prefix = backbone.layouts[0].num_prefix_tokens
        clean = output.logits.gather(1, targets[:, None])
        channels = features.shape[-1]
        expected = torch.empty(len(images), channels)
        for channel in range(channels):  # the reference: one plain ablation per channel
            ablated = features.clone()
            if layout == "tokens":  # patch tokens only: the class token is no grid cell
                ablated[:, prefix:, channel] = 0
            else:
                ablated[..., channel] = 0
            logits = backbone.tail(ablated, output.skips).gather(1, targets[:, None])
            expected[:, channel] = ((clean - logits) / clean)[:, 0]
    assert weights.shape == expected.shape
    torch.testing.assert_close(weights, expected, rtol=1e-4, atol=1e-5)
