"""Hugging Face image classifiers built from configs (random weights, no download).

Instances and local ``save_pretrained`` folders (``hf/<folder>``) go into FrozenBackbone with no
other argument: logits from the ``ModelOutput``, class names from ``id2label``, normalisation and
size from ``preprocessor_config.json``, default layers from the architecture's stages.
"""

from __future__ import annotations

import json

import pytest
import torch
from source_checks import (
    check_gradcam_matches_captum,
    check_logits,
    check_one_pass_heads,
    check_planted_peak,
    to_grid,
)

import lcam
from lcam.backbone import FrozenBackbone
from lcam.backbone.build import describe_model

transformers = pytest.importorskip("transformers")
from transformers.modeling_outputs import ImageClassifierOutput  # noqa: E402

SIZE = 64
LABELS = {"id2label": {i: f"class {i}" for i in range(5)}}
SMALL_VIT = {
    "image_size": SIZE,
    "patch_size": 16,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    **LABELS,
}
# family: (config, model class, default-layer layout, prefix tokens, last stage name)
FAMILIES = {
    "vit": (
        lambda: transformers.ViTConfig(**SMALL_VIT),
        "ViTForImageClassification",
        "tokens",
        1,
        "vit.layers.2",
    ),
    "deit_distilled": (
        lambda: transformers.DeiTConfig(**SMALL_VIT),
        "DeiTForImageClassificationWithTeacher",
        "tokens",
        2,
        "deit.layers.2",
    ),
    "convnext": (
        lambda: transformers.ConvNextConfig(
            hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], image_size=SIZE, **LABELS
        ),
        "ConvNextForImageClassification",
        "nchw",
        0,
        "convnext.encoder.stages.3",
    ),
    "resnet": (
        lambda: transformers.ResNetConfig(
            embedding_size=8,
            hidden_sizes=[8, 16, 32, 64],
            depths=[1, 1, 1, 1],
            layer_type="basic",
            image_size=SIZE,
            **LABELS,
        ),
        "ResNetForImageClassification",
        "nchw",
        0,
        "resnet.encoder.stages.3",
    ),
    "swin": (
        lambda: transformers.SwinConfig(
            image_size=SIZE,
            patch_size=4,
            embed_dim=8,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 1, 1],
            window_size=2,
            **LABELS,
        ),
        "SwinForImageClassification",
        "tokens",
        0,
        "swin.layernorm",
    ),
}
CLASS_TOKEN_POOLED = ("vit", "deit_distilled")
PLANTED_CELL = (1, 0)  # grids are 4x4 (ViT/DeiT), 2x2 (ConvNeXt/ResNet/Swin at 64 px)


def build(family: str, cls: type | None = None) -> torch.nn.Module:
    make_config, class_name, *_ = FAMILIES[family]
    torch.manual_seed(0)
    return (cls or getattr(transformers, class_name))(make_config()).eval()


def images() -> torch.Tensor:
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", FAMILIES)
def test_defaults_logits_and_gradcam_against_captum(family):
    model = build(family)
    _, _, layout, prefix, last_stage = FAMILIES[family]
    description = describe_model(model)
    assert description.stage_layers[-1] == last_stage
    assert description.class_names == [f"class {i}" for i in range(5)]
    backbone = FrozenBackbone(model)
    network = backbone.model  # the wrapper: pixel values -> logits tensor
    assert backbone.target_layer == last_stage
    assert backbone.class_names == description.class_names
    x = images()
    check_logits(backbone, network, x)
    with torch.no_grad():  # the wrapper's logits are the model's ModelOutput.logits
        plain = model(pixel_values=backbone.normalise(x)).logits
    torch.testing.assert_close(backbone(x), plain, rtol=1e-4, atol=1e-5)
    gradcam = lcam.get_explainer("gradcam", backbone)
    if family in CLASS_TOKEN_POOLED:  # the input of the last block's attention (see evidence.py)
        assert gradcam.backbone.target_layer == f"{last_stage}.layernorm_before"
    assert not gradcam.explain(x).degenerate.any()
    check_gradcam_matches_captum(backbone, network, layout, prefix, x)


@pytest.mark.parametrize("family", FAMILIES)
def test_learned_heads_give_one_pass_maps(family):
    model = build(family)
    first = next(
        n
        for n, m in describe_model(model).network.named_modules()
        if isinstance(m, torch.nn.Conv2d)
    )
    check_one_pass_heads(lambda: FrozenBackbone(model), first, images())


def _planted_class(family: str) -> type:
    """The family's classifier whose logits read one cell of the last hidden state."""
    _, class_name, layout, prefix, _ = FAMILIES[family]
    base = getattr(transformers, class_name)

    class Planted(base):
        def forward(self, pixel_values, **kwargs):
            body = getattr(self, self.base_model_prefix)
            hidden = body(pixel_values=pixel_values).last_hidden_state
            cell = to_grid(hidden, layout, prefix)[:, :, PLANTED_CELL[0], PLANTED_CELL[1]]
            return ImageClassifierOutput(logits=self.planted(cell))

    return Planted


@pytest.mark.parametrize("family", ["vit", "convnext", "swin"])
def test_planted_cell_gets_the_gradient_peak(family):
    model = build(family, _planted_class(family))
    config = model.config
    channels = {
        "vit": lambda: config.hidden_size,
        "convnext": lambda: config.hidden_sizes[-1],
        "swin": lambda: config.embed_dim * 2 ** (len(config.depths) - 1),
    }[family]()
    model.planted = torch.nn.Linear(channels, 5)
    check_planted_peak(FrozenBackbone(model), images(), *PLANTED_CELL)


def test_save_pretrained_folder(tmp_path):
    model = build("convnext")
    folder = tmp_path / "convnext-small"
    model.save_pretrained(folder)
    processor = {
        "image_processor_type": "ConvNextImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 80},
        "crop_pct": 1.0,
        "do_normalize": True,
        "image_mean": [0.5, 0.4, 0.3],
        "image_std": [0.2, 0.25, 0.3],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    backbone = FrozenBackbone(f"hf/{folder}")
    assert backbone.class_names == [f"class {i}" for i in range(5)]
    assert backbone.input_size in (80, (80, 80))
    torch.testing.assert_close(backbone.mean.flatten(), torch.tensor([0.5, 0.4, 0.3]))
    torch.testing.assert_close(backbone.std.flatten(), torch.tensor([0.2, 0.25, 0.3]))
    assert backbone.spec["model"] == f"hf/{folder}"
    assert backbone.spec["weights"].startswith("hf:convnext-small:sha256=")
    assert backbone.target_layer == "convnext.encoder.stages.3"
    x = torch.rand(2, 3, 80, 80)
    with torch.no_grad():
        expected = model(pixel_values=backbone.normalise(x)).logits
    torch.testing.assert_close(backbone(x), expected, rtol=1e-4, atol=1e-5)
    # The wrapper's state_dict keys are the model's own: a safetensors file loads over it.
    other = build("convnext")
    torch.nn.init.normal_(other.classifier.weight)
    from safetensors.torch import save_file

    save_file(other.state_dict(), tmp_path / "other.safetensors")
    swapped = FrozenBackbone(f"hf/{folder}", weights=str(tmp_path / "other.safetensors"))
    with torch.no_grad():
        expected = other(pixel_values=swapped.normalise(x)).logits
    torch.testing.assert_close(swapped(x), expected, rtol=1e-4, atol=1e-5)


def test_folders_that_are_not_local_models_or_ask_for_remote_code_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not a local save_pretrained folder"):
        FrozenBackbone(f"hf/{tmp_path / 'missing'}")
    folder = tmp_path / "remote"
    build("resnet").save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageClassification": "modeling_evil.Net"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ValueError, match="custom model code.*never runs remote code"):
        FrozenBackbone(f"hf/{folder}")
