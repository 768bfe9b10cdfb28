"""Pictures of what a frozen network has learned (layer L6, beside training and inference).

``activation_max``: activation maximisation, an input optimised to maximise a class logit or a
channel (``infer.py --method activation_max``). Not an :class:`~lcam.explainers.base.Explainer`:
it explains a unit, not an image.
"""

from lcam.visualise.activation_max import activation_maximisation

__all__ = ["activation_maximisation"]
