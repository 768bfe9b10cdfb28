"""Smoke test of benchmarks/run.py: one tiny measurement in-process (the suite never runs here)
and the helpers behind it."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch  # noqa: F401  (imported at collection, so the test itself stays fast)

import lcam.data  # noqa: F401  (imports pytorch_lightning: about 2 s)

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


def _load_runner():
    name = "lcam_benchmarks_run"
    if name not in sys.modules:  # dataclasses look their module up in sys.modules
        spec = importlib.util.spec_from_file_location(name, RUN)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_single_measurement_writes_a_sane_row(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    runner = _load_runner()
    out = tmp_path / "row.json"
    argv = ["--single", "quickstart", "gradcam", "--repeats", "1", "--threads", "1"]
    assert runner.main([*argv, "--batch-size", "2", "--json", str(out)]) == 0

    payload = json.loads(out.read_text())
    assert payload["machine"]["threads"] == 1
    assert payload["machine"]["torch"]
    (row,) = payload["rows"]
    assert (row["model"], row["method"], row["status"]) == ("quickstart", "gradcam", "ok")
    assert row["images_per_call"] == 2 and row["runs"] == 1
    assert 0 < row["ms_per_image"] < 10_000
    assert 0 < row["ratio"] < 1_000 and math.isfinite(row["ratio"])
    assert row["reference_forward_ms_per_image"] > 0
    # Grad-CAM: one full forward and one backward through the tail only, as lcam reports.
    assert (row["forward_passes"], row["forward_tail_passes"]) == (1.0, 0.0)
    assert (row["backward_passes"], row["backward_tail_passes"]) == (0.0, 1.0)
    assert (row["reported_forward_passes"], row["reported_backward_passes"]) == (1.0, 1.0)
    assert row["peak_rss_mb"] >= row["baseline_rss_mb"] > 0
    # Grad-CAM holds the forward's activations plus the tail's gradients: more than a forward.
    assert row["peak_tensor_mb"] >= row["reference_peak_tensor_mb"] > 0
    assert row["memory_ratio"] == pytest.approx(
        row["peak_tensor_mb"] / row["reference_peak_tensor_mb"]
    )
    table = runner.markdown_table([runner.Row(**row)])
    assert "| quickstart | gradcam |" in table


def test_method_groups_and_errors():
    runner = _load_runner()
    assert runner.expand_methods(["forward", "lcam"])[:3] == ["forward", "lcam_fm", "lcam_img"]
    with pytest.raises(ValueError, match="unknown method"):
        runner.expand_methods(["gradcam", "no_such_method"])
    assert runner.skip_reason("resnet50", "scorecam", quick=True)
    assert runner.skip_reason("quickstart", "scorecam", quick=True) is None


def test_peak_tensor_memory_follows_allocations_and_frees():
    runner = _load_runner()
    mib = 2**20 // 4  # float32 elements in one MiB
    before = torch.zeros(4 * mib)

    def two_alive_then_one() -> None:
        first = torch.ones(mib)
        second = first * 2  # 2 MiB alive
        del first
        third = second + 1  # 2 MiB alive again, never 3
        del second, third
        before.view(2, -1).add_(1)  # a view and an in-place write of memory from before

    assert runner.peak_tensor_mb(two_alive_then_one) == pytest.approx(2.0)

    weights = torch.ones(mib, requires_grad=True)

    def forward_backward() -> None:
        activations = (weights * 3).relu()  # 1 MiB, saved by relu for the backward
        # Backward: relu's input gradient (2 MiB alive), then the weights' gradient (3 MiB),
        # which stays as weights.grad; the product's output was freed after relu.
        activations.sum().backward()

    assert runner.peak_tensor_mb(forward_backward) == pytest.approx(3.0, abs=1e-3)


def test_quick_reductions_are_scaled_back_to_their_defaults():
    _load_runner()  # puts the repository root on sys.path: the benchmarks package
    from benchmarks.cases import Context, build_case
    from benchmarks.models import MODELS, build_backbone, make_images

    spec = dataclasses.replace(MODELS["quickstart"], large=True)  # --quick acts on large models
    images, labels = make_images(spec, 2)
    ctx = Context("quickstart", spec, build_backbone(spec), images, labels, quick=True)

    rise = build_case(ctx, "rise")
    assert rise.slow and len(rise.images) == 1 and rise.options["num_masks"] == 500
    assert "num_masks=500 (default 4000)" in rise.settings
    # RISE: num_masks passes plus the one that picks the class; no fixed part.
    assert rise.scale == ("num_masks=4000", pytest.approx(4001 / 501), None)

    lime = build_case(ctx, "lime")
    what, factor, fixed = lime.scale
    assert (what, factor) == ("num_samples=1000", pytest.approx(1000 / 200))
    assert fixed is not None  # the segmentation, timed apart and not scaled

    gradcam = build_case(ctx, "gradcam")  # not reduced: nothing to scale
    assert gradcam.scale is None and not gradcam.slow and len(gradcam.images) == 2
