"""lcam: learned one-pass class activation maps on frozen classifiers.

The package is built in one-way layers (lowest first; a module imports only its own layer or
lower ones): leaf helpers (``_io``, ``maps``, ``viz``, ``explanation``) -> ``backbone``,
``models``, ``data`` -> ``heads`` -> ``explainers``, ``api``, ``onnx`` -> ``metrics`` ->
``evaluation`` -> ``training``, ``inference``, ``visualise`` -> ``cli`` and this file, the public
API. ``tests/test_layering.py`` enforces it.
"""

from lcam.api import build_explainer, load_explainer, save_explainer
from lcam.backbone import BackboneOutput, FrozenBackbone, WeightsUnavailableError
from lcam.explainers import EXPLAINERS, Explainer, LearnedExplainer, get_explainer
from lcam.explanation import Explanation

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``lcam.LCAMModule``, imported on first use (it pulls in Lightning and the evaluation)."""
    if name == "LCAMModule":
        from lcam.training import LCAMModule

        return LCAMModule
    raise AttributeError(f"module 'lcam' has no attribute {name!r}")


__all__ = [
    "EXPLAINERS",
    "BackboneOutput",
    "Explainer",
    "Explanation",
    "FrozenBackbone",
    "LCAMModule",
    "LearnedExplainer",
    "WeightsUnavailableError",
    "__version__",
    "build_explainer",
    "get_explainer",
    "load_explainer",
    "save_explainer",
]
