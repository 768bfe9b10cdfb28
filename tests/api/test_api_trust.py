"""A checkpoint is data: the model class path it names is imported only with an opt-in."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from lcam.api import build_explainer, load_explainer, save_explainer
from lcam.backbone import FrozenBackbone
from lcam.backbone.build import UntrustedModelError, is_trusted_model

MODULE = "lcam_test_marker_model"


def _checkpoint_naming(tmp_path, class_path: str):
    """An explainer file whose backbone metadata names ``class_path`` (weights of a TinyResNet)."""
    backbone = FrozenBackbone("lcam.models.TinyResNet", num_classes=3, input_size=32)
    explainer = build_explainer(backbone, "lcam_fm")
    path = save_explainer(explainer, tmp_path / "explainer.pt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["lcam"]["backbone"]["model"] = class_path
    torch.save(checkpoint, path)
    return explainer, path


@pytest.fixture
def marker_module(tmp_path, monkeypatch):
    """A module on sys.path whose import writes a marker file (stands for any code at import)."""
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
    yield marker
    sys.modules.pop(MODULE, None)


def test_untrusted_class_path_is_refused_before_anything_is_imported(tmp_path, marker_module):
    _, path = _checkpoint_naming(tmp_path, f"{MODULE}.Net")
    with pytest.raises(UntrustedModelError, match=rf"'{MODULE}\.Net'.*trust_model_code=True"):
        load_explainer(path, device="cpu")
    assert not marker_module.exists()
    assert MODULE not in sys.modules
    with pytest.raises(ValueError, match="--trust-model-code"):  # the message names the CLI flag
        load_explainer(path, device="cpu")


def test_trusted_opt_in_loads_the_class_path(tmp_path, marker_module):
    original, path = _checkpoint_naming(tmp_path, f"{MODULE}.Net")
    explainer = load_explainer(path, device="cpu", trust_model_code=True)
    assert marker_module.exists()
    assert type(explainer.backbone.model).__name__ == "Net"
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(explainer.backbone(images), original.backbone(images))


def test_bundled_and_library_models_need_no_opt_in(tmp_path):
    original, path = _checkpoint_naming(tmp_path, "lcam.models.TinyResNet")
    explainer = load_explainer(path, device="cpu")
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(explainer.backbone(images), original.backbone(images))
    for name in ("resnet50", "vgg16", "timm/convnext_tiny", "hf/some/folder", "lcam.models.X"):
        assert is_trusted_model(name), name
    for name in ("os.system", "mypackage.models.Net", "lcam.explainers.Foo", "../evil", "a/b"):
        assert not is_trusted_model(name), name
