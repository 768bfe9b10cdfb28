"""Which models a checkpoint may name without the user opting in to running code.

A checkpoint is data (loaded with ``weights_only=True``), but its backbone metadata names a model
that is then built. Building a torchvision model, ``timm/<name>``, ``hf/<folder>`` (no remote
code) or a model bundled with lcam runs only code the user installed for that purpose; any other
class path would import an arbitrary installed module and run its code, so it needs
``trust_model_code=True``. The check reads the string only: nothing is imported before it.
"""

from __future__ import annotations

__all__ = ["UntrustedModelError", "check_model_trusted", "is_trusted_model"]

TRUSTED_PREFIXES = ("timm/", "hf/", "lcam.models.")


class UntrustedModelError(ValueError):
    """A checkpoint names a model class path that the user did not agree to import."""


def is_trusted_model(model: str) -> bool:
    """Whether ``model`` may be built from checkpoint metadata without an opt-in."""
    if model.startswith(TRUSTED_PREFIXES):
        return True
    return "." not in model and "/" not in model  # a torchvision name (checked when built)


def check_model_trusted(model: str, trust_model_code: bool, source: str = "the checkpoint") -> None:
    """Raise :class:`UntrustedModelError` naming ``model`` and the opt-in, unless trusted."""
    if trust_model_code or is_trusted_model(model):
        return
    raise UntrustedModelError(
        f"{source} names the model class {model!r}; building it would import and run that "
        "module's code. Only torchvision names, timm/<name>, hf/<folder> and lcam.models.* are "
        "built from a checkpoint by default. If you trust the checkpoint and that code, pass "
        "trust_model_code=True (infer.py --trust-model-code)."
    )
