"""Smoke test of benchmarks/run.py: one tiny measurement in-process (the suite never runs here)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch  # noqa: F401  (imported at collection, so the test itself stays fast)

import lcam.data  # noqa: F401  (imports pytorch_lightning: about 2 s)

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


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
    table = runner.markdown_table([runner.Row(**row)])
    assert "| quickstart | gradcam |" in table


def test_method_groups_and_errors():
    runner = _load_runner()
    assert runner.expand_methods(["forward", "lcam"])[:3] == ["forward", "lcam_fm", "lcam_img"]
    with pytest.raises(ValueError, match="unknown method"):
        runner.expand_methods(["gradcam", "no_such_method"])
    assert runner.skip_reason("resnet50", "scorecam", quick=True)
    assert runner.skip_reason("quickstart", "scorecam", quick=True) is None
