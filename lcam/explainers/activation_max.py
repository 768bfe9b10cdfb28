"""Old import path, kept for one release: activation maximisation now lives in
:mod:`lcam.visualise.activation_max`."""

from lcam.visualise.activation_max import activation_maximisation

__all__ = ["activation_maximisation"]
