from __future__ import annotations

import pytest
import torch
from helpers import tiny_backbone

import lcam
from lcam.heads import HEADS, LCAMFmHead, LCAMImgHead, build_head


@pytest.mark.parametrize("head_name", sorted(HEADS))
def test_all_ones_map_reproduces_the_backbone_logits(head_name: str) -> None:
    backbone = tiny_backbone()
    head = build_head(head_name, backbone)
    images = torch.rand(3, 3, 32, 32)
    output = backbone.run(images)
    ones = torch.ones(3, *output.features.shape[-2:])
    masked = head.masked_logits(backbone, images, output, ones)
    torch.testing.assert_close(masked, output.logits, rtol=0, atol=1e-5)


def test_fm_masking_changes_the_features_the_tail_sees() -> None:
    backbone = tiny_backbone()
    head = LCAMFmHead(backbone.feature_channels, backbone.num_classes)
    images = torch.rand(2, 3, 32, 32)
    output = backbone.run(images)
    half = torch.full((2, 4, 4), 0.5)
    torch.testing.assert_close(
        head.masked_logits(backbone, images, output, half),
        backbone.tail(output.features * 0.5),
    )


def test_img_masking_blackens_the_image_before_normalisation() -> None:
    backbone = tiny_backbone()
    head = LCAMImgHead(backbone.feature_channels, backbone.num_classes)
    images = torch.rand(2, 3, 32, 32)
    zeros = torch.zeros(2, 4, 4)
    black = backbone(torch.zeros(2, 3, 32, 32))
    torch.testing.assert_close(
        head.masked_logits(backbone, images, backbone.run(images), zeros), black
    )


def test_one_pass_equals_the_head_on_separately_computed_features() -> None:
    backbone = tiny_backbone()
    explainer = lcam.build_explainer(backbone, head="lcam_fm")
    torch.nn.init.normal_(explainer.head.conv.weight)
    images = torch.rand(4, 3, 32, 32)
    explanation = explainer.explain(images)

    with torch.no_grad():
        features, _ = backbone.body(images)
        class_maps = explainer.head(features)
        plain_logits = backbone.model(backbone.normalise(images))
    predicted = plain_logits.argmax(1)
    torch.testing.assert_close(explanation.logits, plain_logits, rtol=0, atol=1e-6)
    assert torch.equal(explanation.targets, predicted)
    raw = class_maps[torch.arange(4), predicted].sigmoid()
    expected = torch.nn.functional.interpolate(raw[:, None], size=(32, 32), mode="bilinear")[:, 0]
    low = expected.flatten(1).min(1).values[:, None, None]
    high = expected.flatten(1).max(1).values[:, None, None]
    torch.testing.assert_close(explanation.maps, (expected - low) / (high - low), atol=1e-6, rtol=0)
    assert explanation.maps.shape == (4, 32, 32)
    assert explanation.forward_passes == 1 and explanation.backward_passes == 0
    assert explanation.method == "lcam_fm"


def test_explicit_targets_pick_their_class_maps() -> None:
    explainer = lcam.build_explainer(tiny_backbone(), head="lcam_img")
    torch.nn.init.normal_(explainer.head.conv.weight)
    images = torch.rand(3, 3, 32, 32)
    targets = torch.tensor([4, 0, 2])
    maps = explainer.explain(images, targets).maps
    for row, target in enumerate(targets.tolist()):
        single = explainer.explain(images[row : row + 1], [target]).maps[0]
        torch.testing.assert_close(maps[row], single, atol=1e-5, rtol=0)
    assert not torch.allclose(maps, explainer.explain(images, [1, 1, 1]).maps)


def test_bad_inputs_are_refused_with_reasons() -> None:
    explainer = lcam.build_explainer(tiny_backbone())
    with pytest.raises(ValueError, match=r"target class 5 does not exist.*5 classes"):
        explainer.explain(torch.rand(2, 3, 32, 32), [0, 5])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        explainer.explain(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        explainer.explain(torch.randn(2, 3, 32, 32) * 3)
    with pytest.raises(ValueError, match="unknown head"):
        lcam.build_explainer(tiny_backbone(), head="gradcam_head")


def test_save_and_load_round_trip(tmp_path) -> None:
    explainer = lcam.build_explainer(
        lcam.FrozenBackbone("lcam.models.TinyResNet", num_classes=4, input_size=32)
    )
    torch.nn.init.normal_(explainer.head.conv.weight)
    path = lcam.save_explainer(explainer, tmp_path / "head.pt")
    loaded = lcam.load_explainer(path, device="cpu")
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.explain(images).maps, explainer.explain(images).maps)
    assert loaded.backbone.spec == explainer.backbone.spec


def test_loading_refuses_code_and_non_checkpoints(tmp_path) -> None:
    class Exploit:
        def __reduce__(self):
            return (exec, ("open('pwned', 'w').write('x')",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"lcam": Exploit(), "state_dict": {}}, evil)
    with pytest.raises(ValueError, match="weights_only=True"):
        lcam.load_explainer(evil, device="cpu")
    assert not (tmp_path / "pwned").exists()
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(1)}, plain)
    with pytest.raises(ValueError, match="not an lcam checkpoint"):
        lcam.load_explainer(plain, device="cpu")
