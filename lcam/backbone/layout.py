"""Feature layouts: how a layer's output holds its spatial grid, and how to convert it.

A target layer's output comes in one of three layouts:

- ``"nchw"``: maps ``(B, C, h, w)`` (CNNs);
- ``"nhwc"``: channels-last maps ``(B, h, w, C)`` (timm Swin, some ConvNeXt/MetaFormer stages);
- ``"tokens"``: a sequence ``(B, P + h*w, C)`` of ``P`` prefix tokens (class, distillation,
  register tokens) followed by the patch tokens in row-major order (ViT, DeiT, EVA, BEiT).

Explainers and heads only ever see *grids* ``(B, C, h, w)``: :func:`to_grid` converts any layout
to one, :func:`from_grid` converts a grid back (keeping the prefix tokens of a reference output),
:func:`mask_layout` multiplies ``(B, h, w)`` maps into an output in its own layout.

:func:`infer_layout` decides the layout from probe shapes and hints and never guesses: when the
evidence allows more than one reading it raises, naming the argument that settles it
(``layout=``, ``num_prefix_tokens=``, ``grid=``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["LAYOUTS", "Layout", "from_grid", "infer_layout", "mask_layout", "to_grid"]

LAYOUTS = ("nchw", "nhwc", "tokens")
MAX_PREFIX_TOKENS = 8  # class + distillation + up to 6 register tokens; more needs the argument


@dataclass(frozen=True)
class Layout:
    """How one layer's output holds its grid.

    Attributes:
        kind: ``"nchw"``, ``"nhwc"`` or ``"tokens"``.
        num_prefix_tokens: tokens in front of the patch tokens (``"tokens"`` only).
        grid: ``(h, w)`` of the patch grid (``"tokens"`` only; maps carry it in their shape).
    """

    kind: str
    num_prefix_tokens: int = 0
    grid: tuple[int, int] | None = None


def to_grid(activations: Tensor, layout: Layout, token_weighting: bool = False) -> Tensor:
    """A layer output in ``layout`` as a ``(B, C, h, w)`` grid.

    With ``token_weighting`` (tokens only) every patch token is first multiplied channel-wise by
    the first (class) token, as T-TAME does.
    """
    if layout.kind == "nchw":
        _check_dims(activations, 4, layout)
        return activations
    if layout.kind == "nhwc":
        _check_dims(activations, 4, layout)
        return activations.permute(0, 3, 1, 2)
    _check_dims(activations, 3, layout)
    patches = activations[:, layout.num_prefix_tokens :]
    grid_h, grid_w = _token_grid(activations, layout)
    if token_weighting:
        if layout.num_prefix_tokens < 1:
            raise ValueError("token_weighting needs a class token; this layer has no prefix token")
        patches = patches * activations[:, :1]
    return patches.transpose(1, 2).reshape(len(activations), -1, grid_h, grid_w)


def from_grid(grid: Tensor, layout: Layout, like: Tensor) -> Tensor:
    """Inverse of :func:`to_grid`: a ``(B, C, h, w)`` grid in ``layout``.

    Prefix tokens, which a grid does not hold, are taken from ``like`` (an output of the same
    layer, broadcast over the batch when it has one image).
    """
    if layout.kind == "nchw":
        return grid
    if layout.kind == "nhwc":
        return grid.permute(0, 2, 3, 1)
    patches = grid.flatten(2).transpose(1, 2)
    prefix = like[:, : layout.num_prefix_tokens].to(patches.dtype)
    prefix = prefix.expand(len(patches), *prefix.shape[1:])
    return torch.cat([prefix, patches], dim=1)


def mask_layout(activations: Tensor, attention: Tensor, layout: Layout) -> Tensor:
    """Multiply ``(B, h, w)`` maps into a layer output in its own layout (prefix tokens kept)."""
    if layout.kind == "nchw":
        return activations * attention[:, None]
    if layout.kind == "nhwc":
        return activations * attention[..., None]
    prefix = layout.num_prefix_tokens
    scale = attention.flatten(1)[..., None].to(activations.dtype)
    return torch.cat([activations[:, :prefix], activations[:, prefix:] * scale], dim=1)


def _check_dims(activations: Tensor, dims: int, layout: Layout) -> None:
    if activations.dim() != dims:
        raise ValueError(
            f"activations of shape {tuple(activations.shape)} do not have the {layout.kind!r} "
            f"layout of this layer ({dims} dimensions expected)"
        )


def _token_grid(activations: Tensor, layout: Layout) -> tuple[int, int]:
    patches = activations.shape[1] - layout.num_prefix_tokens
    if layout.grid is not None and layout.grid[0] * layout.grid[1] == patches:
        return layout.grid
    raise ValueError(
        f"{patches} patch tokens (after {layout.num_prefix_tokens} prefix tokens) do not fill "
        f"the {layout.grid} grid of this layer; the input size may differ from the probed one"
    )


def _spatial_fits(size: tuple[int, int], image: tuple[int, int]) -> bool:
    """Whether an ``(h, w)`` grid (both > 1) has the aspect of an ``(H, W)`` image: some
    integer stride ``s`` gives ``H // s == h`` and ``W // s == w`` up to one cell (padding)."""
    h, w = size
    if h < 2 or w < 2 or h > image[0] or w > image[1]:
        return False
    stride = image[0] / h
    return abs(image[1] / stride - w) <= 1 and abs(image[0] / (image[1] / w) - h) <= 1


def _token_candidates(
    tokens: int,
    image: tuple[int, int],
    prefix: int | None,
    patch: int | None,
    declared: int | None = None,
    patch_grid: tuple[int, int] | None = None,
) -> list[Layout]:
    """Every ``(prefix tokens, grid)`` reading of ``tokens`` consistent with the image: those
    on the patch embedding's grid when the patch size (or grid) is known and some fit, else
    every grid of square patches (merged stages such as Swin's are coarser than the embedding).
    A model that declares ``declared`` prefix tokens has them at a layer or not yet (CaiT and
    XCiT add the class token after their patch blocks): ``0`` or ``declared``."""
    if prefix is not None:
        prefixes = [prefix]
    elif declared is not None:
        prefixes = sorted({0, declared})
    else:
        prefixes = list(range(MAX_PREFIX_TOKENS + 1))
    if patch is not None or patch_grid is not None:
        grid = patch_grid or (image[0] // patch, image[1] // patch)  # type: ignore[operator]
        on_patches = [
            Layout("tokens", p, grid) for p in prefixes if tokens - p == grid[0] * grid[1]
        ]
        if on_patches:
            return on_patches
    found = []
    for p in prefixes:
        patches = tokens - p
        for h in range(2, patches // 2 + 1):
            if patches % h == 0:
                w = patches // h
                # a square-patch grid: the same integer patch size tiles both sides
                if any(image[0] // s == h and image[1] // s == w for s in range(1, image[0] + 1)):
                    found.append(Layout("tokens", p, (h, w)))
    return found


def _fail(shape: tuple[int, ...], what: str, argument: str) -> ValueError:
    return ValueError(
        f"cannot tell the layout of a target layer output of shape {shape}: {what}. "
        f"Pass {argument} to FrozenBackbone"
    )


def infer_layout(
    shape: Sequence[int],
    image: tuple[int, int],
    *,
    second: tuple[Sequence[int], tuple[int, int]] | None = None,
    channels: int | None = None,
    kind: str | None = None,
    num_prefix_tokens: int | None = None,
    grid: tuple[int, int] | None = None,
    patch_size: int | None = None,
    declared_prefix_tokens: int | None = None,
    patch_grid: tuple[int, int] | None = None,
) -> Layout:
    """The layout of a layer output of ``shape`` probed at an ``(H, W)`` image.

    Args:
        shape: the output's shape ``(B, ...)``.
        image: ``(H, W)`` of the probe image.
        second: the shape at a second probe size and that size, when the model accepts one
            (dimensions that change with the input size are spatial).
        channels: the layer's known channel count (e.g. from timm's ``feature_info``).
        kind: the layout the user gave (``layout=``); checked against the shape.
        num_prefix_tokens, grid: the user's token description (exact).
        patch_size: the model's patch size, which fixes a token grid.
        declared_prefix_tokens: the prefix tokens the model declares (a layer has them or none).
        patch_grid: ``(h, w)`` patch grid of the built model at ``image``.

    Raises:
        ValueError: for an output with no grid or one the evidence cannot settle, naming the
            argument to pass.
    """
    shape = tuple(int(s) for s in shape)
    if kind is not None and kind not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {kind!r}")
    if len(shape) == 3 and kind in (None, "tokens"):
        if grid is not None:
            prefix = (
                shape[1] - grid[0] * grid[1] if num_prefix_tokens is None else num_prefix_tokens
            )
            if prefix < 0 or prefix + grid[0] * grid[1] != shape[1]:
                raise _fail(shape, f"grid={grid} and {prefix} prefix tokens do not add up", "grid=")
            return Layout("tokens", prefix, tuple(grid))
        declared = declared_prefix_tokens
        found = _token_candidates(
            shape[1], image, num_prefix_tokens, patch_size, declared, patch_grid
        )
        if second is not None and len(found) > 1:
            other = _token_candidates(
                second[0][1], second[1], num_prefix_tokens, patch_size, declared
            )
            prefixes = {layout.num_prefix_tokens for layout in other}
            found = [layout for layout in found if layout.num_prefix_tokens in prefixes]
        if len(found) == 1:
            return found[0]
        readings = ", ".join(f"{f.num_prefix_tokens} prefix + {f.grid}" for f in found) or "none"
        raise _fail(
            shape,
            f"token readings consistent with a {image} image: {readings}",
            "num_prefix_tokens= (and grid=(h, w))",
        )
    if len(shape) != 4 or kind == "tokens":
        raise _fail(shape, "expected (B, C, h, w), (B, h, w, C) or (B, N, C) tokens", "layout=")
    readings = {"nchw": (shape[2], shape[3], shape[1]), "nhwc": (shape[1], shape[2], shape[3])}
    if kind is not None:
        h, w, _ = readings[kind]
        if h < 1 or w < 1:
            raise _fail(shape, f"no grid in layout {kind!r}", "layout=")
        return Layout(kind)
    found = [k for k, (h, w, c) in readings.items() if _spatial_fits((h, w), image)]
    if channels is not None:
        found = [k for k in found if readings[k][2] == channels]
    if len(found) > 1 and second is not None and len(second[0]) == 4:
        moved = [a != b for a, b in zip(shape, second[0], strict=True)]
        found = [
            k
            for k in found
            if moved == ([False, False, True, True] if k == "nchw" else [False, True, True, False])
        ]
    if len(found) == 1:
        return Layout(found[0])
    what = "both (B, C, h, w) and (B, h, w, C) fit" if found else "no dimension pair is a grid"
    raise _fail(shape, what, "layout='nchw' or layout='nhwc'")
