"""A checkpoint is data: the model class path it names is imported only with an opt-in."""

from __future__ import annotations

import sys

import pytest
import torch
from helpers import checkpoint_naming, write_marker_module

from lcam.api import load_explainer
from lcam.backbone.build import UntrustedModelError, is_trusted_model

MODULE = "lcam_test_marker_model"


@pytest.fixture
def marker_module(tmp_path, monkeypatch):
    """A module on sys.path whose import writes a marker file (stands for any code at import)."""
    marker = write_marker_module(tmp_path, MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    yield marker
    sys.modules.pop(MODULE, None)


def test_untrusted_class_path_is_refused_before_anything_is_imported(tmp_path, marker_module):
    _, path = checkpoint_naming(tmp_path, f"{MODULE}.Net")
    with pytest.raises(UntrustedModelError, match=rf"'{MODULE}\.Net'.*trust_model_code=True"):
        load_explainer(path, device="cpu")
    assert not marker_module.exists()
    assert MODULE not in sys.modules
    with pytest.raises(ValueError, match="--trust-model-code"):  # the message names the CLI flag
        load_explainer(path, device="cpu")


def test_trusted_opt_in_loads_the_class_path(tmp_path, marker_module):
    original, path = checkpoint_naming(tmp_path, f"{MODULE}.Net")
    explainer = load_explainer(path, device="cpu", trust_model_code=True)
    assert marker_module.exists()
    assert type(explainer.backbone.model).__name__ == "Net"
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(explainer.backbone(images), original.backbone(images))


def test_bundled_and_library_models_need_no_opt_in(tmp_path):
    original, path = checkpoint_naming(tmp_path, "lcam.models.TinyResNet")
    explainer = load_explainer(path, device="cpu")
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(explainer.backbone(images), original.backbone(images))
    for name in ("resnet50", "vgg16", "timm/convnext_tiny", "hf/some/folder", "lcam.models.X"):
        assert is_trusted_model(name), name
    for name in ("os.system", "mypackage.models.Net", "lcam.explainers.Foo", "../evil", "a/b"):
        assert not is_trusted_model(name), name
