"""What an lcam ONNX file is: its graph's input and output names, its metadata key, and the
optional packages that write and run it."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["INPUT_NAME", "METADATA_KEY", "OUTPUT_NAMES", "require_package"]

METADATA_KEY = "lcam"
INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "maps")
INSTALL_HINT = "pip install lcam[onnx]"


def require_package(module: str, purpose: str) -> Any:
    """Import ``module`` (``"onnx"``, ``"onnxruntime"``) or say how to install it.

    Raises:
        ImportError: the package is not installed; the message names the extra to install.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the {module!r} package, which is not installed: {INSTALL_HINT}"
        ) from error
