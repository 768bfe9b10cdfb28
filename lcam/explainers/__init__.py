"""Explainers: the learned one-pass head and the classic methods, one interface.

Importing this package registers every classic explainer; ``get_explainer(name, backbone,
**options)`` builds one by name.
"""

from lcam.explainers import cam, gradient, perturbation, scorecam, surrogate  # noqa: F401
from lcam.explainers.base import Explainer
from lcam.explainers.learned import LearnedExplainer
from lcam.explainers.registry import EXPLAINERS, get_explainer, register_explainer

__all__ = ["EXPLAINERS", "Explainer", "LearnedExplainer", "get_explainer", "register_explainer"]
