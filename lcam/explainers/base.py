"""The interface every explainer, learned or classic, answers.

:class:`Explainer` owns everything that is the same for every method: input checks, the shape
checks of what a method returns, the flagging of degenerate maps (with one warning per
explainer), the resizing to the input resolution, the min-max normalisation and the pass counts
reported in the :class:`~lcam.explanation.Explanation`. A method implements only
:meth:`Explainer.compute_maps`: how its raw maps are computed. Methods that hook the network do
it through context managers (:func:`lcam.explainers.features.capture_output`,
:func:`lcam.explainers.gradient.relu_gradient_rule`) so the hooks are removed on exit, also when
an exception is raised.

``upsample_maps`` and ``normalise_maps`` live in :mod:`lcam.maps`; they stay importable from here.
"""

from __future__ import annotations

import contextlib
import warnings
from abc import abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lcam.backbone import FrozenBackbone
from lcam.explainers.passes import count_passes
from lcam.explanation import Explanation
from lcam.maps import normalise_maps, upsample_maps

__all__ = [
    "DegenerateMapWarning",
    "Explainer",
    "Targets",
    "check_images",
    "degenerate_maps",
    "normalise_maps",
    "resolve_targets",
    "upsample_maps",
]

Targets = Tensor | Sequence[int] | int | None


class DegenerateMapWarning(UserWarning):
    """An explainer produced a constant or all-zero map: it carries no information."""


def check_images(images: Tensor) -> Tensor:
    """Validate a ``(B, 3, H, W)`` float batch in [0, 1] and return it unchanged."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got {images.dtype}")
    low, high = images.min().item(), images.max().item()
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"images must be in [0, 1] (normalisation happens inside the backbone); got values "
            f"in [{low:.3g}, {high:.3g}]"
        )
    return images


def resolve_targets(logits: Tensor, targets: Targets) -> Tensor:
    """The ``(B,)`` classes to explain: ``targets`` checked against ``logits`` ``(B, K)``.

    ``None`` means the predicted class; an int is used for every image.
    """
    batch, num_classes = logits.shape
    if targets is None:
        return logits.argmax(dim=1)
    resolved = torch.as_tensor(targets, dtype=torch.long, device=logits.device)
    if resolved.dim() == 0:
        resolved = resolved.expand(batch)
    if resolved.shape != (batch,):
        raise ValueError(f"targets must have shape ({batch},), got {tuple(resolved.shape)}")
    bad = (resolved < 0) | (resolved >= num_classes)
    if bad.any():
        raise ValueError(
            f"target class {resolved[bad][0].item()} does not exist: the model has "
            f"{num_classes} classes (0..{num_classes - 1})"
        )
    return resolved


def degenerate_maps(maps: Tensor, rtol: float = 1e-5) -> Tensor:
    """``(B,)`` bool: which of the raw ``(B, h, w)`` maps are constant (all zero included).

    A map is constant when ``max - min <= rtol * max(|max|, |min|)``: an all-zero map has range
    0, and a map whose spread is float rounding noise on a constant is flagged too.
    """
    flat = maps.detach().flatten(1).float()
    high, low = flat.max(dim=1).values, flat.min(dim=1).values
    return (high - low) <= rtol * torch.maximum(high.abs(), low.abs())


class Explainer(nn.Module):
    """Base class: validates inputs and outputs, flags degenerate maps, resizes and normalises.

    A method only implements :meth:`compute_maps`, which returns raw maps at any resolution; the
    base class flags constant raw maps (:func:`degenerate_maps`; one
    :class:`DegenerateMapWarning` per explainer instance), upsamples the maps bilinearly to the
    input size and min-max normalises each to [0, 1].

    Pass counts (defined in :class:`~lcam.explanation.Explanation`): the counts an
    :class:`Explanation` reports are measured around :meth:`compute_maps`
    (:func:`~lcam.explainers.passes.count_passes`), so they are what ran, on the torch.fx split
    and under the hook fallback alike. :attr:`forward_passes`, :attr:`tail_passes` and
    :attr:`backward_passes` *state* a method's per-image cost on the torch.fx split before it
    runs (class attributes, or set from the options in ``__init__``; methods whose counts depend
    on the image update them in :meth:`compute_maps`). ``tests/explainers/test_contract.py``
    checks the measured counts against hooks of its own for every registered explainer and head
    on each backbone path, and the stated ones against them on the torch.fx split.

    Images of any floating dtype are accepted: the network computes in its own dtype and the
    maps come back in the images' dtype.

    Args:
        backbone: the frozen classifier to explain.
    """

    name: str = "explainer"
    forward_passes: float = 1.0
    tail_passes: float = 0.0
    backward_passes: float = 0.0

    def __init__(self, backbone: FrozenBackbone) -> None:
        super().__init__()
        self.backbone = backbone
        self._warned_degenerate = False

    @property
    def device(self) -> torch.device:
        """Device of the backbone."""
        return self.backbone.mean.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype the network computes in (its first floating parameter's; float32 when
        it has none or is not a torch network, e.g. an ONNX session)."""
        model = getattr(self.backbone, "model", None)
        parameters = model.parameters() if isinstance(model, nn.Module) else ()
        return next((p.dtype for p in parameters if p.is_floating_point()), torch.float32)

    @abstractmethod
    def compute_maps(self, images: Tensor, targets: Targets) -> tuple[Tensor, Tensor, Tensor]:
        """Raw maps ``(B, h, w)``, logits ``(B, K)`` and resolved targets ``(B,)``."""

    def degenerate_cause(self, maps: Tensor) -> str:
        """The likely reason why the raw maps ``(n, h, w)`` (all flagged) are constant."""
        if bool((maps == 0).all()):
            return (
                "the map is all zero: no positive evidence for the class at the target layer "
                "(the ReLU of the weighted sum removed everything), or the class score does not "
                "depend on the input"
            )
        return "the class score does not depend on the input the method perturbs or differentiates"

    def _layer_hint(self) -> str:
        """Where a map would carry information, when the backbone knows such a layer."""
        finder = getattr(self.backbone, "evidence_layer", None)  # FrozenBackbone's
        layer = finder() if finder is not None else None
        if layer is None:
            return ""
        return (
            f" At {self.backbone.target_layer!r} the class evidence does not reach the grid; "
            f"FrozenBackbone(..., target_layer={layer!r}) is a layer where it does."
        )

    def explain(self, images: Tensor, targets: Targets = None) -> Explanation:
        """Explain ``(B, 3, H, W)`` images in [0, 1] for ``targets`` (default: predicted class).

        Returns:
            An :class:`Explanation` with ``(B, H, W)`` maps in [0, 1] in the images' float dtype
            on the backbone's device, ``degenerate`` flags (see :func:`degenerate_maps`) and the
            pass counts measured during the call.

        Raises:
            ValueError: bad images or targets, or a method returned non-finite maps.
        """
        given = check_images(images)
        images = given.to(self.device, self.dtype)
        # a torch network's passes are measured (the method's only, not the warning's probe);
        # an explainer on something else (an ONNX session) reports the passes it states
        measured = isinstance(self.backbone, FrozenBackbone)
        with count_passes(self.backbone) if measured else contextlib.nullcontext() as count:
            raw_maps, logits, resolved = self.compute_maps(images, targets)
        passes = count.per_image(len(images)) if count is not None else self.stated_passes()
        raw_maps = self._check_outputs(images, raw_maps.detach().float(), logits, resolved)
        degenerate = degenerate_maps(raw_maps)
        if bool(degenerate.any()):
            self._warn_degenerate(raw_maps, degenerate)
        shown = self.activate(raw_maps)
        maps = normalise_maps(upsample_maps(shown, tuple(images.shape[-2:])))
        maps = maps.to(given.dtype)
        return Explanation(
            maps=maps,
            logits=logits.detach(),
            targets=resolved,
            forward_passes=passes["forward_passes"],
            backward_passes=passes["backward_passes"],
            method=self.name,
            tail_passes=passes["tail_passes"],
            degenerate=degenerate,
            raw_maps=raw_maps,
            untrained=self.untrained_targets(resolved),
            backward_to_input=passes["backward_to_input"],
        )

    def stated_passes(self) -> dict[str, float]:
        """The per-image counts the method states (see the class docstring), by the names of
        :class:`Explanation`'s fields; no stated backward pass reaches the image."""
        return {
            "forward_passes": float(self.forward_passes),
            "tail_passes": float(self.tail_passes),
            "backward_passes": float(self.backward_passes),
            "backward_to_input": 0.0,
        }

    def untrained_targets(self, targets: Tensor) -> Tensor | None:
        """``(B,)`` bool flags of ``targets`` ``(B,)`` the method was never trained to explain,
        or ``None`` (nothing to flag: methods that are not trained)."""
        return None

    def activate(self, raw_maps: Tensor) -> Tensor:
        """How ``(B, h, w)`` raw maps become the maps shown (before resizing and normalising):
        unchanged here; learned heads apply their ``map_activation``."""
        return raw_maps

    def _check_outputs(
        self, images: Tensor, maps: Tensor, logits: Tensor, targets: Tensor
    ) -> Tensor:
        batch = len(images)
        if maps.dim() != 3 or len(maps) != batch:
            raise ValueError(
                f"{self.name} returned maps of shape {tuple(maps.shape)}, not (B, h, w)"
            )
        if logits.shape[0] != batch or targets.shape != (batch,):
            raise ValueError(
                f"{self.name} returned logits {tuple(logits.shape)} and targets "
                f"{tuple(targets.shape)} for {batch} images"
            )
        finite = maps.flatten(1).isfinite().all(dim=1)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().tolist()
            raise ValueError(
                f"{self.name} produced non-finite maps (NaN or inf) for image(s) {bad}; check "
                "the model's logits on these images"
            )
        return maps

    def _warn_degenerate(self, maps: Tensor, degenerate: Tensor) -> None:
        if self._warned_degenerate:
            return
        self._warned_degenerate = True
        indices = degenerate.nonzero().flatten().tolist()
        warnings.warn(
            f"{self.name}: the raw map of image(s) {indices} is constant, so the normalised map "
            f"is all zero and carries no information (Explanation.degenerate marks them). "
            f"Likely cause: {self.degenerate_cause(maps[degenerate])}.{self._layer_hint()} "
            "This warning is shown "
            "once per explainer.",
            DegenerateMapWarning,
            stacklevel=3,
        )
