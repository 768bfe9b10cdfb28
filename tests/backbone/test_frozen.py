from __future__ import annotations

import pytest
import torch
import torchvision
from helpers import tiny_backbone

import lcam
from lcam.backbone import FrozenBackbone, WeightsUnavailableError
from lcam.models import TinyResNet


def test_one_pass_gives_features_and_the_plain_logits() -> None:
    backbone = tiny_backbone()
    images = torch.rand(3, 3, 32, 32)
    output = backbone.run(images)
    plain = backbone.model(backbone.normalise(images))
    assert output.features.shape == (3, 32, 4, 4)
    assert output.skips == ()
    torch.testing.assert_close(output.logits, plain, rtol=0, atol=1e-6)
    assert backbone.num_classes == 5 and backbone.feature_channels == 32


def test_default_target_layers_per_family() -> None:
    assert FrozenBackbone("resnet18", num_classes=3, input_size=64).target_layer == "layer4"
    vgg = FrozenBackbone("vgg16", num_classes=3, input_size=64)
    assert vgg.target_layer == "features.29"  # conv5_3 after its ReLU, before pool5
    assert isinstance(vgg.model.features[29], torch.nn.ReLU)
    assert FrozenBackbone("alexnet", num_classes=3, input_size=64).target_layer == "features.11"
    assert tiny_backbone().target_layer == "layer4"


def test_tail_resume_runs_no_layer_before_the_target() -> None:
    backbone = FrozenBackbone("resnet18", num_classes=4, input_size=64)
    images = torch.rand(2, 3, 64, 64)
    output = backbone.run(images)
    calls: list[str] = []
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
        for name, module in backbone.model.named_modules()
        if name
    ]
    try:
        resumed = backbone.tail(output.features, output.skips)
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(resumed, output.logits)
    assert calls == ["avgpool", "fc"]  # layer4 itself and everything before it did not run


def test_split_inside_a_residual_block_carries_the_skip() -> None:
    backbone = FrozenBackbone(
        "resnet18", num_classes=4, input_size=64, target_layer="layer4.0.conv2"
    )
    images = torch.rand(2, 3, 64, 64)
    output = backbone.run(images)
    assert len(output.skips) == 1  # the block input feeds the residual add after the target
    torch.testing.assert_close(output.logits, backbone.model(backbone.normalise(images)))


def test_split_keeps_the_model_in_place_ops_and_never_writes_into_what_it_returns() -> None:
    model = torchvision.models.resnet18(num_classes=4).eval()
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and all(m.inplace for m in relus)
    # bn2 is the first operand of its block's residual add, and the features returned here.
    backbone = FrozenBackbone(model, input_size=64, target_layer="layer4.1.bn2")
    assert all(m.inplace for m in relus)  # the user's model is not modified
    body_adds = [
        node.target.__name__
        for node in backbone._body.graph.nodes
        if node.op == "call_function" and "add" in getattr(node.target, "__name__", "")
    ]
    # 7 residual adds run in place before the target; the target's own add runs in the tail.
    assert body_adds == ["add_into_first"] * 7

    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        bn2: list[torch.Tensor] = []
        handle = model.layer4[1].bn2.register_forward_hook(
            lambda m, i, o: bn2.append(o.clone())  # before the block adds into it
        )
        plain = model(backbone.normalise(images))
        handle.remove()
        output = backbone.run(images)
        kept = output.features.clone()
        torch.testing.assert_close(output.logits, plain, rtol=0, atol=1e-6)
        torch.testing.assert_close(output.features, bn2[0], rtol=0, atol=0)
        again = backbone.tail(output.features, output.skips)
    torch.testing.assert_close(again, plain, rtol=0, atol=1e-6)
    assert torch.equal(output.features, kept)  # the tail added into a copy


def test_an_in_place_op_on_the_features_writes_into_a_copy() -> None:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(inplace=True),  # reads the target layer's output in place
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )
    backbone = FrozenBackbone(model, input_size=16, target_layer="0", mean=(0, 0, 0), std=(1, 1, 1))
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        output = backbone.run(images)
        assert (output.features < 0).any()  # the ReLU has not been applied to them
        kept = output.features.clone()
        torch.testing.assert_close(backbone.tail(output.features), output.logits)
    assert torch.equal(output.features, kept)
    assert model[1].inplace


def test_backbone_is_frozen_and_stays_in_eval_mode() -> None:
    backbone = tiny_backbone()
    backbone.train()
    assert backbone.training
    assert not any(module.training for module in backbone.model.modules())
    assert not any(p.requires_grad for p in backbone.parameters())
    images = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(backbone(images), backbone(images))  # no BN/Dropout randomness


def test_conversion_keeps_the_split_in_sync() -> None:
    backbone = tiny_backbone().to(torch.float64)
    output = backbone.run(torch.rand(1, 3, 32, 32, dtype=torch.float64))
    assert output.features.dtype == torch.float64 and output.logits.dtype == torch.float64


def test_offline_torchvision_weights_fail_with_a_clear_message(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached: a download is needed
    with pytest.raises(WeightsUnavailableError, match="offline.*local state_dict file"):
        FrozenBackbone("resnet18", weights="IMAGENET1K_V1")


def test_unknown_names_fail_clearly() -> None:
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET9K'.*IMAGENET1K_V1"):
        FrozenBackbone("resnet18", weights="IMAGENET9K")
    with pytest.raises(ValueError, match="unknown model 'resnet_999'"):
        FrozenBackbone("resnet_999")
    with pytest.raises(ValueError, match="cannot import model class"):
        FrozenBackbone("lcam.models.NoSuchNet")
    with pytest.raises(ValueError, match="target layer 'layer9' is not a module"):
        FrozenBackbone("resnet18", num_classes=3, target_layer="layer9", input_size=32)


def test_local_weights_file_round_trip_and_mismatch(tmp_path) -> None:
    model = torchvision.models.resnet18(num_classes=3)
    path = tmp_path / "resnet18.pt"
    torch.save(model.state_dict(), path)
    backbone = FrozenBackbone("resnet18", num_classes=3, weights=str(path), input_size=64)
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(backbone(images), model.eval()(backbone.normalise(images)))
    assert backbone.spec["weights"].startswith("file:resnet18.pt:sha256=")
    with pytest.raises(ValueError, match="does not fit model 'resnet18'"):
        FrozenBackbone("resnet18", num_classes=7, weights=str(path), input_size=64)


def test_class_path_model_with_num_classes() -> None:
    backbone = FrozenBackbone("lcam.models.TinyResNet", num_classes=3, input_size=32)
    assert backbone.num_classes == 3 and backbone.spec["model"] == "lcam.models.TinyResNet"


def test_class_path_model_without_num_classes_argument(tmp_path) -> None:
    """A class of fixed outputs (a wrapper of pretrained weights, as ``EfficientNetLite0``) is
    built without ``num_classes``; a checkpoint of it loads again (its metadata records the count),
    and a count the model does not give is refused."""
    options = {"target_layer": "conv", "input_size": 32, "mean": (0, 0, 0), "std": (1, 1, 1)}
    backbone = FrozenBackbone("helpers.PlantedRegion", num_classes=2, **options)
    assert backbone.num_classes == 2
    explainer = lcam.build_explainer(backbone, "lcam_fm")
    path = lcam.save_explainer(explainer, tmp_path / "explainer.pt")
    loaded = lcam.load_explainer(path, device="cpu", trust_model_code=True)
    assert loaded.backbone.num_classes == 2
    with pytest.raises(
        ValueError, match=r"num_classes=5 .* 'helpers.PlantedRegion' gives 2 logits"
    ):
        FrozenBackbone("helpers.PlantedRegion", num_classes=5, **options)


def test_building_and_retargeting_a_backbone_leaves_the_global_rng_alone() -> None:
    # Probes are seeded: a user's seeded head initialisation must not depend on how many
    # views or retargets lcam made before it (explainers on one backbone each take a view).
    model = TinyResNet(num_classes=6)
    state = torch.get_rng_state()
    backbone = lcam.FrozenBackbone(model, input_size=64)
    backbone.view(["layer2", "layer3"])
    lcam.get_explainer("gradcam", backbone)
    assert torch.equal(torch.get_rng_state(), state)
