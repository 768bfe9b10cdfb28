"""lcam: learned one-pass class activation maps on frozen classifiers."""

from lcam.api import build_explainer, load_explainer, save_explainer
from lcam.backbone import BackboneOutput, FrozenBackbone, WeightsUnavailableError
from lcam.explainers.base import Explainer
from lcam.explainers.learned import LearnedExplainer
from lcam.explanation import Explanation

__version__ = "0.1.0"

__all__ = [
    "BackboneOutput",
    "Explainer",
    "Explanation",
    "FrozenBackbone",
    "LearnedExplainer",
    "WeightsUnavailableError",
    "__version__",
    "build_explainer",
    "load_explainer",
    "save_explainer",
]
