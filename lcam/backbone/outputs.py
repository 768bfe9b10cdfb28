"""Logits from what a model's forward returns: a tensor, a ``ModelOutput``, a dict or a tuple.

Research code often returns ``{"logits": ...}`` or ``(logits, aux)``. :func:`select_logits`
reads the ``(B, K)`` logits from

- a tensor (as it is);
- an object with a ``logits`` tensor attribute (Hugging Face ``ModelOutput``);
- a dict with a ``"logits"`` entry;
- the first element of a tuple or list (``(logits, aux)``, torchvision's ``InceptionOutputs``);

or from what an ``output=`` selector names: a dict key or attribute name, an index, or a
callable ``output -> logits``. Anything else is refused with a message naming the selector.
:class:`LogitsModel` wraps a model so that its forward returns the logits tensor; it adopts the
model's submodules, parameters and buffers under their own names, so target layers and
state_dict keys are the model's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, fx, nn

__all__ = ["LogitsModel", "OutputSelector", "select_logits"]

OutputSelector = str | int | Callable[[Any], Tensor]
_TENSORS = (Tensor, fx.Proxy)  # a traced forward returns proxies


def _describe(output: Any) -> str:
    if isinstance(output, dict):
        return f"a dict with keys {list(output)}"
    if isinstance(output, list | tuple):
        return f"a {type(output).__name__} of {[type(item).__name__ for item in output]}"
    return f"a {type(output).__name__}"


def select_logits(output: Any, selector: OutputSelector | None = None) -> Tensor:
    """The logits tensor in a model's ``output`` (see the module docstring).

    Raises:
        ValueError: no rule finds a tensor; the message names the ``output=`` selector.
    """
    if callable(selector):
        found: Any = selector(output)
    elif isinstance(selector, int):
        sequence = isinstance(output, list | tuple) and -len(output) <= selector < len(output)
        found = output[selector] if sequence else None
    elif isinstance(selector, str):
        found = (
            output.get(selector) if isinstance(output, dict) else getattr(output, selector, None)
        )
    elif isinstance(output, _TENSORS):
        found = output
    elif isinstance(getattr(output, "logits", None), _TENSORS):
        found = output.logits
    elif isinstance(output, dict):
        found = output.get("logits")
    elif isinstance(output, list | tuple) and output:
        found = output[0]
    else:
        found = None
    if not isinstance(found, _TENSORS):
        chosen = "" if selector is None else f" with output={selector!r}"
        raise ValueError(
            f"the model returns {_describe(output)}{chosen}, in which no logits tensor was "
            "found (a tensor, .logits, ['logits'] or the first element of a tuple). Pass "
            "output= to FrozenBackbone: a key or attribute name (output='scores'), an index "
            "(output=1) or a callable (output=lambda out: out.scores)"
        )
    return found


class LogitsModel(nn.Module):
    """``model`` whose forward returns ``select_logits(model(x), selector)`` ``(B, K)``.

    The model's children, parameters and buffers are registered on the wrapper under their own
    names (the same objects), so ``named_modules()``, target layers and state_dict keys do not
    change; the model's own ``forward`` runs (hooks on the model's root do not).
    """

    def __init__(self, model: nn.Module, selector: OutputSelector | None = None) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, parameter in model._parameters.items():
            self.register_parameter(name, parameter)
        for name, buffer in model._buffers.items():
            self.register_buffer(
                name, buffer, persistent=name not in model._non_persistent_buffers_set
            )
        self.__dict__["inner"] = model  # not a child: its modules are registered once
        self.selector = selector

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` normalised images -> ``(B, K)`` logits."""
        return select_logits(self.inner.forward(x), self.selector)

    def _apply(self, fn: Any, recurse: bool = True) -> LogitsModel:
        super()._apply(fn, recurse)
        # Converted direct tensors go back to the model, whose forward reads them.
        self.inner._parameters.update(self._parameters)
        self.inner._buffers.update(self._buffers)
        return self

    def train(self, mode: bool = True) -> LogitsModel:
        """Set the mode of the wrapper, its children and the wrapped root module."""
        super().train(mode)
        self.inner.training = mode
        return self
