"""build_model / describe_model: names, weights files (safetensors, torch), what models say."""

from __future__ import annotations

import pytest
import torch
import torchvision

from lcam.backbone import FrozenBackbone, WeightsUnavailableError
from lcam.backbone.build import ModelDescription, build_model, describe_model

timm = pytest.importorskip("timm")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_timm_name_with_a_local_weights_file(tmp_path, suffix):
    reference = timm.create_model("mobilenetv3_small_050", num_classes=4).eval()
    torch.nn.init.normal_(reference.classifier.weight)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(reference.state_dict(), path)
    else:
        torch.save(reference.state_dict(), path)
    description, weights_id = build_model(
        "timm/mobilenetv3_small_050", num_classes=4, weights=str(path)
    )
    assert weights_id.startswith(f"file:weights{suffix}:sha256=")
    assert description.input_size == (224, 224)  # its pretrained_cfg
    assert description.mean == pytest.approx((0.485, 0.456, 0.406))
    assert description.stage_layers[-1] == "blocks.5" and description.stage_channels[-1] == 288
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(description.network.eval()(x), reference(x))
    backbone = FrozenBackbone("timm/mobilenetv3_small_050", num_classes=4, weights=str(path))
    assert backbone.spec["model"] == "timm/mobilenetv3_small_050"
    assert backbone.input_size in (224, (224, 224))


def test_timm_class_names_come_from_its_bundled_imagenet_info():
    description, _ = build_model("timm/mobilenetv3_small_050")
    assert len(description.class_names) == 1000
    assert "tabby" in description.class_names[281]
    other, _ = build_model("timm/mobilenetv3_small_050", num_classes=3)
    assert other.class_names is None  # a new classifier has no names


def test_timm_errors_are_clear(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # Offline mode answers at once; the socket guard alone also fails, after retries (~50 s).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
        build_model("timm/no_such_net")
    with pytest.raises(ValueError, match="unknown weights 'zz_in1k'.*resnet18.a1_in1k"):
        build_model("timm/resnet18", weights="zz_in1k")
    with pytest.raises(WeightsUnavailableError, match="offline.*weights=PATH"):
        build_model("timm/resnet18", weights="pretrained")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="bad.safetensors"):
        build_model("timm/resnet18", weights=str(bad))


def test_torchvision_descriptions():
    vit = torchvision.models.VisionTransformer(
        image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    description = describe_model(vit)
    assert description.input_size == (64, 64) and description.fixed_input_size
    assert description.stage_layers == [
        "encoder.layers.encoder_layer_0",
        "encoder.layers.encoder_layer_1",
    ]
    assert description.num_prefix_tokens == 1
    backbone = FrozenBackbone(vit)  # its own image size, not 224
    assert backbone.input_size in (64, (64, 64))
    resnet, weights_id = build_model("resnet18", num_classes=3)
    assert weights_id is None and resnet.stage_layers == ["layer1", "layer2", "layer3", "layer4"]
    convnext = describe_model(torchvision.models.convnext_tiny())
    assert convnext.stage_layers == ["features.1", "features.3", "features.5", "features.7"]


def test_any_other_module_is_described_as_unknown():
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    assert describe_model(network) == ModelDescription(network=network)
