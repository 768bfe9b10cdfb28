"""Old import path, kept for one release: ONNX export and the onnxruntime explainer now live in
:mod:`lcam.onnx` (``python -m lcam.onnx``; ``python -m lcam.export`` still works)."""

import sys

from lcam.onnx import *  # noqa: F403
from lcam.onnx import __all__, main  # noqa: F401  (re-exported)

if __name__ == "__main__":
    sys.exit(main())
