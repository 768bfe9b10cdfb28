"""lcam: learned one-pass class activation maps on frozen classifiers."""

from lcam.api import build_explainer, load_explainer, save_explainer
from lcam.backbone import BackboneOutput, FrozenBackbone, WeightsUnavailableError
from lcam.explainers import EXPLAINERS, Explainer, LearnedExplainer, get_explainer
from lcam.explanation import Explanation

__version__ = "0.1.0"

__all__ = [
    "EXPLAINERS",
    "BackboneOutput",
    "Explainer",
    "Explanation",
    "FrozenBackbone",
    "LearnedExplainer",
    "WeightsUnavailableError",
    "__version__",
    "build_explainer",
    "get_explainer",
    "load_explainer",
    "save_explainer",
]
