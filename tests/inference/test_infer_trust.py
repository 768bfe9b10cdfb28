"""infer.py builds a checkpoint's third-party model class only with --trust-model-code."""

from __future__ import annotations

import sys

import numpy as np
from helpers import checkpoint_naming, write_marker_module
from PIL import Image

from lcam.inference import main

MODULE = "lcam_infer_marker_model"


def test_trust_model_code_flag(tmp_path, monkeypatch, capsys) -> None:
    marker = write_marker_module(tmp_path, MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    _, path = checkpoint_naming(tmp_path, f"{MODULE}.Net")  # a class path outside lcam
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "in" / "x.png")
    args = ["--checkpoint", str(path), "--input", str(tmp_path / "in"), "--num-workers", "0"]
    args += ["--no-progress"]

    assert main([*args, "--output", str(tmp_path / "refused")]) == 2
    error = capsys.readouterr().err
    assert f"{MODULE}.Net" in error and "--trust-model-code" in error
    assert not marker.exists() and MODULE not in sys.modules
    assert not (tmp_path / "refused").exists()

    try:
        assert main([*args, "--output", str(tmp_path / "out"), "--trust-model-code"]) == 0
    finally:
        sys.modules.pop(MODULE, None)
    assert marker.exists()
    assert (tmp_path / "out" / "x.png.map.npy").is_file()
