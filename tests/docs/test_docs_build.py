"""The documentation site builds offline with ``mkdocs build --strict``: a broken link, a missing
page, a missing image or an API name that does not resolve fails the build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config)]
    return subprocess.run(
        [*command, "-d", str(site)], capture_output=True, text=True, env=env, timeout=300
    )


def test_mkdocs_builds_strict_with_every_page_and_the_api_reference(tmp_path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" not in result.stderr, result.stderr[-3000:]
    site = tmp_path / "site"
    pages = {p.relative_to(ROOT / "docs").with_suffix("") for p in (ROOT / "docs").rglob("*.md")}
    for page in pages:
        html = (
            site / page / "index.html"
            if page.name != "index"
            else site / page.parent / "index.html"
        )
        assert html.is_file(), f"{page}.md was not built"
    # The API reference is generated from the docstrings of every public name.
    api = (site / "api" / "backbone" / "index.html").read_text(encoding="utf-8")
    assert 'id="lcam.backbone.FrozenBackbone"' in api
    assert "The frozen classifier" in api or "FrozenBackbone" in api
    for module in ("lcam", "heads", "explainers", "metrics", "training", "inference", "onnx"):
        text = (site / "api" / (module if module != "lcam" else "lcam") / "index.html").read_text(
            encoding="utf-8"
        )
        assert text.count('class="doc doc-object') >= 1, module
    assert (site / "assets" / "overlays.png").is_file()
