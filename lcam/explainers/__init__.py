"""Explainers (layer L3): the learned one-pass head and the classic methods, one interface.

Importing this package registers every classic explainer; ``get_explainer(name, backbone,
**options)`` builds one by name. Files: ``base`` (the :class:`Explainer` contract, degenerate
maps), ``passes`` (the pass counts measured during a call), ``registry``, ``features`` and
``cam_tail`` (what the channel CAMs need), ``cam``, ``gradient``, ``scorecam``, ``sampling``
(what perturbation methods share), ``perturbation``, ``ridge``, ``surrogate_base`` and
``surrogate`` (LIME, KernelSHAP), ``learned``, ``elementwise_cam`` (LayerCAM, HiResCAM),
``eigencam``, ``fullgrad``, ``input_paths`` (what the input-attribution methods share),
``integrated_gradients``, ``smoothgrad``, ``gradient_shap``. They import from ``lcam.maps``,
``lcam.explanation``, ``lcam.backbone`` and ``lcam.heads`` only.
"""

from lcam.explainers import (  # noqa: F401
    cam,
    eigencam,
    elementwise_cam,
    fullgrad,
    gradient,
    gradient_shap,
    integrated_gradients,
    perturbation,
    scorecam,
    smoothgrad,
    surrogate,
)
from lcam.explainers.base import DegenerateMapWarning, Explainer
from lcam.explainers.learned import LearnedExplainer, UntrainedClassWarning
from lcam.explainers.registry import EXPLAINERS, get_explainer, register_explainer

__all__ = [
    "EXPLAINERS",
    "DegenerateMapWarning",
    "Explainer",
    "LearnedExplainer",
    "UntrainedClassWarning",
    "get_explainer",
    "register_explainer",
]
