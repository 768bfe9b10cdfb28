from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import lcam
from lcam.inference import main as infer_main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    backbone = lcam.FrozenBackbone(
        "lcam.models.TinyResNet", num_classes=4, input_size=32, class_names=["a", "b", "c", "d"]
    )
    explainer = lcam.build_explainer(backbone)
    torch.nn.init.normal_(explainer.head.conv.weight)
    return lcam.save_explainer(explainer, tmp_path_factory.mktemp("ckpt") / "explainer.pt")


def _write_images(folder):
    rng = np.random.default_rng(0)
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 255, (50, 30), dtype=np.uint8)).save(
        folder / "nested" / "gray.jpg"
    )
    Image.fromarray(rng.integers(0, 255, (33, 33, 4), dtype=np.uint8), "RGBA").save(
        folder / "rgba.png"
    )
    # Output names: the path relative to the input folder, extension kept.
    return {"wide.png": (40, 60), "nested/gray.jpg": (50, 30), "rgba.png": (33, 33)}


def test_infer_writes_every_output_with_valid_contents(tmp_path, checkpoint) -> None:
    sizes = _write_images(tmp_path / "in")
    out = tmp_path / "out"
    code = infer_main(
        [
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(out),
            "--batch-size",
            "2",
            "--num-workers",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in records) == sorted(sizes)
    for record in records:
        saliency = np.load(out / record["map"])
        assert saliency.dtype == np.float32 and saliency.shape == sizes[record["name"]]
        assert 0 <= saliency.min() and saliency.max() <= 1 and saliency.max() > saliency.min()
        with Image.open(out / record["overlay"]) as overlay:
            assert overlay.mode == "RGB" and overlay.size[::-1] == sizes[record["name"]]
        probabilities = [entry["probability"] for entry in record["top5"]]
        assert len(probabilities) == 4 and probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1, abs=1e-4)
        assert record["target"] == record["top5"][0]["class"]
        assert record["target_name"] == "abcd"[record["target"]]
    assert not list(out.rglob("*.partial"))
    assert not (out / "errors.jsonl").exists()


def test_bad_files_are_reported_and_reruns_finish_the_rest(tmp_path, checkpoint) -> None:
    _write_images(tmp_path / "in")
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "in" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    args = [
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(out),
        "--num-workers",
        "0",
        "--no-progress",
    ]
    assert infer_main(args) == 1
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["path"].rsplit("/", 1)[1] for e in errors) == ["broken.png", "empty.jpg"]
    assert all(e["error"] for e in errors)
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3

    (out / "wide.png.map.npy").unlink()  # an output lost: only that image is redone
    before = (out / "rgba.png.map.npy").stat().st_mtime_ns
    (tmp_path / "in" / "broken.png").unlink()
    (tmp_path / "in" / "empty.jpg").unlink()
    assert infer_main(args) == 0
    assert (out / "wide.png.map.npy").exists()
    assert (out / "rgba.png.map.npy").stat().st_mtime_ns == before
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    assert (out / "errors.jsonl").read_text() == ""


def test_target_by_name_and_index(tmp_path, checkpoint) -> None:
    _write_images(tmp_path / "in")
    common = [
        "--checkpoint",
        str(checkpoint),
        "--input",
        str(tmp_path / "in" / "wide.png"),
        "--num-workers",
        "0",
        "--no-progress",
    ]
    assert infer_main([*common, "--output", str(tmp_path / "c"), "--target", "c"]) == 0
    assert infer_main([*common, "--output", str(tmp_path / "two"), "--target", "2"]) == 0
    by_name = json.loads((tmp_path / "c" / "predictions.jsonl").read_text())
    assert by_name["target"] == 2 and by_name["target_name"] == "c"
    np.testing.assert_array_equal(
        np.load(tmp_path / "c" / "wide.png.map.npy"),
        np.load(tmp_path / "two" / "wide.png.map.npy"),
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target", "zebra"], "not 'predicted', a class index or a class name"),
        (["--target", "9"], "--target 9 does not exist"),
    ],
)
def test_usage_errors_exit_2_before_any_work(tmp_path, checkpoint, capsys, extra, message) -> None:
    _write_images(tmp_path / "in")
    code = infer_main(
        [
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
            *extra,
        ]
    )
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_empty_folder_and_missing_checkpoint(tmp_path, checkpoint, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert (
        infer_main(
            [
                "--checkpoint",
                str(checkpoint),
                "--input",
                str(tmp_path / "empty"),
                "--output",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "no images" in capsys.readouterr().err
    _write_images(tmp_path / "in")
    assert (
        infer_main(
            [
                "--checkpoint",
                str(tmp_path / "nope.ckpt"),
                "--input",
                str(tmp_path / "in"),
                "--output",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("gradcam", []),
        ("layercam", []),
        ("hirescam", []),
        ("eigencam", []),
        ("fullgrad", []),
        ("integrated_gradients", ["--option", "steps=3"]),
        ("smoothgrad", ["--option", "num_samples=2"]),
        ("gradient_shap", ["--option", "num_samples=2"]),
    ],
)
def test_classic_methods_need_only_a_backbone(tmp_path, method, options) -> None:
    _write_images(tmp_path / "in")
    out = tmp_path / method
    code = infer_main(
        [
            "--method",
            method,
            *options,
            "--backbone",
            "lcam.models.TinyResNet",
            "--num-classes",
            "4",
            "--image-size",
            "32",
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(out),
            "--num-workers",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 3 and {r["method"] for r in records} == {method}
    saved = np.load(out / "wide.png.map.npy")
    assert saved.shape == (40, 60) and np.isfinite(saved).all()


def test_methods_take_the_backbone_and_options_from_a_checkpoint(tmp_path, checkpoint) -> None:
    _write_images(tmp_path / "in")
    out = tmp_path / "lime"
    code = infer_main(
        [
            "--method",
            "lime",
            "--checkpoint",
            str(checkpoint),
            "--input",
            str(tmp_path / "in" / "wide.png"),
            "--output",
            str(out),
            "--option",
            "num_samples=16",
            "--option",
            "segmentation=slic",
            "--target",
            "b",
            "--num-workers",
            "0",
            "--no-progress",
        ]
    )
    assert code == 0
    record = json.loads((out / "predictions.jsonl").read_text())
    assert record["method"] == "lime" and record["target_name"] == "b"


def test_activation_max_writes_one_png_per_target(tmp_path, checkpoint) -> None:
    code = infer_main(
        [
            "--method",
            "activation_max",
            "--checkpoint",
            str(checkpoint),
            "--target",
            "a,3",
            "--output",
            str(tmp_path),
            "--option",
            "steps=3",
        ]
    )
    assert code == 0
    for name in ("activation_max_class0.png", "activation_max_class3.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size == (32, 32) and image.mode == "RGB"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--method", "gradcam"], "needs --backbone"),
        (["--method", "gradcamz", "--backbone", "resnet18"], "unknown explainer 'gradcamz'"),
        (["--method", "lcam"], "needs --checkpoint"),
        (
            ["--method", "lime", "--backbone", "resnet18", "--option", "num_samples"],
            "not KEY=VALUE",
        ),
    ],
)
def test_method_usage_errors(tmp_path, capsys, arguments, message) -> None:
    _write_images(tmp_path / "in")
    code = infer_main(
        [*arguments, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o")]
    )
    assert code == 2 and message in capsys.readouterr().err


def test_options_that_contradict_the_checkpoint_are_named(tmp_path, checkpoint, capsys) -> None:
    _write_images(tmp_path / "in")
    code = infer_main(
        [
            "--checkpoint",
            str(checkpoint),
            "--num-classes",
            "7",
            "--image-size",
            "64",
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    error = capsys.readouterr().err
    assert code == 2 and "num_classes: checkpoint 4, requested 7" in error
    assert "input_size: checkpoint 32, requested 64" in error
    assert not (tmp_path / "out").exists()


def test_exported_onnx_runs_the_same_pipeline(tmp_path, checkpoint) -> None:
    from lcam.onnx import main as export_main

    _write_images(tmp_path / "in")
    assert export_main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "m.onnx")]) == 0
    common = ["--input", str(tmp_path / "in"), "--num-workers", "0", "--no-progress"]
    assert (
        infer_main(["--onnx", str(tmp_path / "m.onnx"), "--output", str(tmp_path / "o"), *common])
        == 0
    )
    assert (
        infer_main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "t"), *common]) == 0
    )
    for name in ("wide.png", "rgba.png", "nested/gray.jpg"):
        np.testing.assert_allclose(
            np.load(tmp_path / "o" / f"{name}.map.npy"),
            np.load(tmp_path / "t" / f"{name}.map.npy"),
            atol=1e-4,
        )
