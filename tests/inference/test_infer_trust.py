"""infer.py builds a checkpoint's third-party model class only with --trust-model-code."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import torch
from PIL import Image

import lcam
from lcam.inference import main

MODULE = "lcam_infer_marker_model"


def test_trust_model_code_flag(tmp_path, monkeypatch, capsys) -> None:
    marker = tmp_path / "imported.marker"
    source = f"""
        from pathlib import Path
        from lcam.models import TinyResNet

        Path({str(marker)!r}).write_text("imported")

        class Net(TinyResNet):
            pass
    """
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    backbone = lcam.FrozenBackbone("lcam.models.TinyResNet", num_classes=3, input_size=32)
    path = lcam.save_explainer(lcam.build_explainer(backbone), tmp_path / "explainer.pt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["lcam"]["backbone"]["model"] = f"{MODULE}.Net"  # a class path outside lcam
    torch.save(checkpoint, path)
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
