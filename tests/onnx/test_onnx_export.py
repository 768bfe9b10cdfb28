from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

import lcam
from lcam.api import explainer_metadata
from lcam.explainers import UntrainedClassWarning
from lcam.inference import collect_images, run_inference
from lcam.onnx import OnnxExplainer, OnnxModelInfo, export_onnx, load_onnx_explainer

TOLERANCE = 1e-4
CLASS_NAMES = ["circle", "square", "triangle", "star"]


def _randomise(explainer: lcam.LearnedExplainer, seed: int = 0) -> lcam.LearnedExplainer:
    """Random head weights and non-trivial BatchNorm statistics, so every branch matters."""
    generator = torch.Generator().manual_seed(seed)
    conv = explainer.head.conv
    with torch.no_grad():
        # Unit-scale class maps, as a trained head gives. With std 1 the sigmoid saturates, a
        # map's range (max - min) shrinks to ~1e-4 and min-max normalisation magnifies float32
        # rounding of *any* two runtimes past the tolerance.
        torch.nn.init.normal_(conv.weight, std=conv.in_channels**-0.5, generator=generator)
        torch.nn.init.normal_(conv.bias, std=0.1, generator=generator)
        for module in explainer.backbone.model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
                module.running_mean.uniform_(-0.2, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return explainer.eval()


def _tiny(map_activation: str = "sigmoid") -> lcam.LearnedExplainer:
    backbone = lcam.FrozenBackbone(
        "lcam.models.TinyResNet", num_classes=4, input_size=32, class_names=CLASS_NAMES
    )
    return _randomise(lcam.build_explainer(backbone, map_activation=map_activation))


def _export_and_load(explainer, path, **options) -> OnnxExplainer:
    export_onnx(explainer, path, **options)
    return load_onnx_explainer(path, device="cpu", num_threads=1)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a.float() - b.float()).abs().max().item()


def _files(folder) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _check_parity(explainer, exported: OnnxExplainer, image_size: int) -> dict[str, float]:
    """Graph outputs and explanations of both runtimes agree on batches of 1 and 3."""
    diffs = {"logits": 0.0, "maps": 0.0, "explained": 0.0}
    for batch in (1, 3):
        images = torch.rand(batch, 3, image_size, image_size)
        with torch.no_grad():
            output, class_maps = explainer.class_maps(images)
        if explainer.map_activation == "sigmoid":
            class_maps = class_maps.sigmoid()
        logits, maps = exported.class_maps(images)
        assert logits.shape == (batch, explainer.backbone.num_classes)
        assert maps.shape == (batch, explainer.backbone.num_classes, *class_maps.shape[-2:])
        diffs["logits"] = max(diffs["logits"], _max_diff(logits, output.logits))
        diffs["maps"] = max(diffs["maps"], _max_diff(maps, class_maps))
        for targets in (None, [c % 4 for c in range(batch)], 1):
            expected = explainer.explain(images, targets)
            got = exported.explain(images, targets)
            assert torch.equal(got.targets, expected.targets)
            assert got.maps.shape == (batch, image_size, image_size)
            assert 0 <= got.maps.min() and got.maps.max() <= 1
            diffs["explained"] = max(diffs["explained"], _max_diff(got.maps, expected.maps))
            assert _max_diff(got.logits, expected.logits) <= TOLERANCE
            assert (got.forward_passes, got.backward_passes) == (1.0, 0.0)
            assert got.method == expected.method
    assert all(diff <= TOLERANCE for diff in diffs.values()), diffs
    return diffs


@pytest.mark.parametrize("map_activation", ["sigmoid", "logit"])
def test_tiny_resnet_parity_with_dynamic_batch(tmp_path, map_activation) -> None:
    explainer = _tiny(map_activation)
    exported = _export_and_load(explainer, tmp_path / "tiny.onnx")
    assert exported.map_activation == map_activation
    _check_parity(explainer, exported, 32)


@pytest.mark.parametrize("target_layer", [None, "layer4.0.conv2"])
def test_resnet18_parity_including_a_split_inside_a_residual_block(tmp_path, target_layer) -> None:
    backbone = lcam.FrozenBackbone(
        "resnet18", num_classes=5, input_size=64, target_layer=target_layer
    )
    explainer = _randomise(lcam.build_explainer(backbone))
    skips = explainer.backbone.run(torch.rand(1, 3, 64, 64)).skips
    assert len(skips) == (0 if target_layer is None else 1)  # the residual input crosses the split
    exported = _export_and_load(explainer, tmp_path / "resnet18.onnx")
    _check_parity(explainer, exported, 64)


def test_metadata_round_trip_and_atomic_write(tmp_path) -> None:
    explainer = _tiny()
    path = export_onnx(explainer, tmp_path / "sub" / "tiny.onnx", opset=17)
    assert path == tmp_path / "sub" / "tiny.onnx"
    assert [p.name for p in path.parent.iterdir()] == ["tiny.onnx"]  # no partial file left
    model = onnx.load(path)
    assert model.opset_import[0].version == 17
    props = {entry.key: entry.value for entry in model.metadata_props}
    stored = json.loads(props["lcam"])
    assert stored.pop("onnx")["image_size"] == 32
    assert stored.pop("class_examples") == [0, 0, 0, 0]
    assert stored == json.loads(json.dumps(explainer_metadata(explainer)))

    exported = load_onnx_explainer(path, device="cpu", num_threads=1)
    info = exported.backbone
    assert isinstance(info, OnnxModelInfo)
    assert info.class_names == tuple(CLASS_NAMES)
    assert (info.input_size, info.num_classes) == (32, 4)
    assert info.model == "lcam.models.TinyResNet" and info.target_layer == "layer4"
    assert info.feature_size == explainer.backbone.feature_size
    assert exported.name == explainer.name == "lcam_fm"
    assert exported.device == torch.device("cpu")
    assert exported.providers == ["CPUExecutionProvider"]
    assert exported.metadata["class_names"] == CLASS_NAMES
    with pytest.raises(AttributeError):
        info.input_size = 64  # read-only


def _rewrite_metadata(path, change) -> None:
    model = onnx.load(path)
    entry = next(entry for entry in model.metadata_props if entry.key == "lcam")
    metadata = json.loads(entry.value)
    change(metadata)
    entry.value = json.dumps(metadata)
    onnx.save_model(model, path)


def test_exported_explainer_flags_the_classes_the_head_never_trained_on(tmp_path) -> None:
    explainer = _tiny()
    explainer.count_training_labels(torch.tensor([0, 0, 2]))
    exported = _export_and_load(explainer, tmp_path / "tiny.onnx")
    images, targets = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    with pytest.warns(UntrainedClassWarning, match=r"square\), 3 \(star\) had no training"):
        flags = exported.explain(images, targets).untrained
    assert flags.tolist() == [False, True, False, True]
    with pytest.warns(UntrainedClassWarning):
        assert torch.equal(explainer.explain(images, targets).untrained, flags)

    # Files exported before the counts existed flag nothing; broken counts are refused.
    _rewrite_metadata(tmp_path / "tiny.onnx", lambda metadata: metadata.pop("class_examples"))
    old = load_onnx_explainer(tmp_path / "tiny.onnx", device="cpu", num_threads=1)
    assert old.training_counts() is None
    assert not old.explain(images, targets).untrained.any()
    _rewrite_metadata(tmp_path / "tiny.onnx", lambda metadata: metadata.update(class_examples=[1]))
    with pytest.raises(ValueError, match="'class_examples' that are not 4 counts"):
        load_onnx_explainer(tmp_path / "tiny.onnx", device="cpu")


@pytest.mark.parametrize("training", [False, True])
def test_export_leaves_every_module_in_its_mode(tmp_path, training) -> None:
    explainer = _tiny().train(training)
    modes = {name: module.training for name, module in explainer.named_modules()}
    export_onnx(explainer, tmp_path / "tiny.onnx")
    assert {name: module.training for name, module in explainer.named_modules()} == modes


def test_image_size_option_fixes_the_graph_input(tmp_path) -> None:
    explainer = _tiny()
    exported = _export_and_load(explainer, tmp_path / "tiny48.onnx", image_size=48)
    assert exported.backbone.input_size == 48
    images = torch.rand(2, 3, 48, 48)
    assert _max_diff(exported.explain(images).maps, explainer.explain(images).maps) <= TOLERANCE
    with pytest.raises(ValueError, match="takes 48x48 images, got 32x32"):
        exported.explain(torch.rand(1, 3, 32, 32))


def test_run_inference_writes_the_same_files_as_the_torch_explainer(tmp_path) -> None:
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    (inputs / "nested").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(inputs / "wide.png")
    Image.fromarray(rng.integers(0, 255, (50, 30, 3), dtype=np.uint8)).save(inputs / "tall.png")
    Image.fromarray(rng.integers(0, 255, (33, 33), dtype=np.uint8)).save(
        inputs / "nested" / "gray.png"
    )
    files = collect_images([inputs])
    explainer = _tiny()
    exported = _export_and_load(explainer, tmp_path / "tiny.onnx")
    outputs = {}
    for label, runner in (("torch", explainer), ("onnx", exported)):
        outputs[label] = tmp_path / label
        counts = run_inference(
            runner, files, outputs[label], batch_size=2, num_workers=0, progress=False
        )
        assert counts == {"done": 3, "skipped": 0, "failed": 0}
    written = {label: _files(folder) for label, folder in outputs.items()}
    assert written["onnx"] == written["torch"]
    assert len(written["torch"]) == 3 * 2 + 1  # map and overlay per image, predictions.jsonl
    records = {}
    for label, folder in outputs.items():
        lines = (folder / "predictions.jsonl").read_text().splitlines()
        records[label] = [json.loads(line) for line in lines]
    assert len(records["torch"]) == 3
    for ours, theirs in zip(records["onnx"], records["torch"], strict=True):
        for key in ("name", "target", "target_name", "map", "overlay", "method", "requested"):
            assert ours[key] == theirs[key]
        assert [e["class"] for e in ours["top5"]] == [e["class"] for e in theirs["top5"]]
        for a, b in zip(ours["top5"], theirs["top5"], strict=True):
            assert a["probability"] == pytest.approx(b["probability"], abs=TOLERANCE)
        ours_map = np.load(outputs["onnx"] / ours["map"])
        theirs_map = np.load(outputs["torch"] / theirs["map"])
        assert ours_map.dtype == np.float32 and ours_map.shape == theirs_map.shape
        assert np.abs(ours_map - theirs_map).max() <= TOLERANCE
        with (
            Image.open(outputs["onnx"] / ours["overlay"]) as a,
            Image.open(outputs["torch"] / theirs["overlay"]) as b,
        ):
            difference = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
            assert difference.max() <= 1  # uint8 rounding of maps equal within 1e-4


def test_targets_are_validated_like_the_torch_explainer(tmp_path) -> None:
    exported = _export_and_load(_tiny(), tmp_path / "tiny.onnx")
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="target class 4 does not exist"):
        exported.explain(images, [0, 4])
    with pytest.raises(ValueError, match="targets must have shape"):
        exported.explain(images, [0, 1, 2])
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        exported.explain(images * 255)


def test_errors_name_the_cause(tmp_path, monkeypatch) -> None:
    explainer = _tiny()
    with pytest.raises(TypeError, match="LearnedExplainer"):
        export_onnx(lcam.get_explainer("gradcam", explainer.backbone), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="image_size"):
        export_onnx(explainer, tmp_path / "x.onnx", image_size=0)
    with pytest.raises(FileNotFoundError):
        load_onnx_explainer(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        load_onnx_explainer(tmp_path / "junk.onnx")

    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, on purpose
        torch.onnx.export(plain, (torch.rand(1, 3, 8, 8),), tmp_path / "plain.onnx", dynamo=False)
    with pytest.raises(ValueError, match="no 'lcam' metadata"):
        load_onnx_explainer(tmp_path / "plain.onnx", device="cpu")

    path = export_onnx(explainer, tmp_path / "tiny.onnx")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ValueError, match="onnxruntime-gpu"):
            load_onnx_explainer(path, device="cuda")
    with pytest.raises(ValueError, match="device must be"):
        load_onnx_explainer(path, device="mps")

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the package were not installed
    with pytest.raises(ImportError, match=r"pip install lcam\[onnx\]"):
        export_onnx(explainer, tmp_path / "y.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install lcam\[onnx\]"):
        load_onnx_explainer(path)
