"""Procedural "shapes on clutter" dataset used for tests, demos and the tiny backbone.

Every item is rendered on the fly from ``(seed, index)`` alone: one coloured shape (the class
object) on a smooth random colour field with thin random lines and tiny specks as clutter, plus
mild pixel noise. Nothing is read from or written to disk (except by :func:`export_images`).

Command line::

    python -m lcam.data OUTDIR --count 16 [--num-classes 6] [--image-size 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from lcam._io import atomic_write

__all__ = ["SHAPE_NAMES", "SyntheticShapes", "export_images"]

SHAPE_NAMES: tuple[str, ...] = ("disc", "square", "triangle", "cross", "ring", "diamond")
"""Class names, in label order. ``num_classes=k`` uses the first ``k`` of them."""

# Object bounding-box side as a fraction of the image side.
_MIN_SCALE = 0.3
_MAX_SCALE = 0.5
# Cross bar half-width and ring inner radius, in units of the object's half-side.
_CROSS_HALF_WIDTH = 0.3
_RING_INNER_RADIUS = 0.55
# Low-resolution grid of the smooth background colour field.
_BACKGROUND_GRID = 4
_NOISE_STD = 0.03
_SEED_STRIDE = 1_000_003


def _uniform(
    g: torch.Generator, low: float, high: float, shape: Sequence[int] = ()
) -> torch.Tensor:
    """Uniform samples in ``[low, high)`` of the given shape (float32)."""
    return low + (high - low) * torch.rand(tuple(shape), generator=g)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Convert colours ``(N, 3)`` in HSV (all channels in [0, 1]) to RGB ``(N, 3)`` in [0, 1]."""
    h, s, v = hsv.unbind(-1)
    # Standard formulation: f(n) = v - v*s*max(0, min(k, 4-k, 1)), k = (n + 6h) mod 6.
    n = torch.tensor([5.0, 3.0, 1.0])
    k = (n + 6.0 * h[:, None]) % 6.0
    ramp = torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)
    return v[:, None] - v[:, None] * s[:, None] * ramp


def _random_colours(
    g: torch.Generator,
    count: int,
    sat: tuple[float, float],
    val: tuple[float, float],
) -> torch.Tensor:
    """``count`` random RGB colours ``(count, 3)`` with saturation/value drawn from the ranges."""
    hsv = torch.stack(
        [
            torch.rand(count, generator=g),
            _uniform(g, *sat, (count,)),
            _uniform(g, *val, (count,)),
        ],
        dim=-1,
    )
    return _hsv_to_rgb(hsv)


def _shape_mask(label: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Boolean mask of shape ``label`` in object coordinates.

    ``u`` (right) and ``v`` (down) are ``(S, S)`` pixel-centre coordinates relative to the object
    centre, divided by the object's half-side, so the object's bounding box is ``[-1, 1]^2``.
    """
    name = SHAPE_NAMES[label]
    au, av = u.abs(), v.abs()
    if name == "disc":
        return u * u + v * v <= 1.0
    if name == "square":
        return (au <= 1.0) & (av <= 1.0)
    if name == "triangle":  # apex up (v = -1), base down (v = 1)
        return (av <= 1.0) & (au <= (v + 1.0) * 0.5)
    if name == "cross":
        w = _CROSS_HALF_WIDTH
        return ((au <= w) & (av <= 1.0)) | ((av <= w) & (au <= 1.0))
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= _RING_INNER_RADIUS**2)
    if name == "diamond":  # square rotated by 45 degrees
        return au + av <= 1.0
    raise AssertionError(f"unhandled shape {name!r}")  # pragma: no cover


def _segment_distance_sq(
    px: torch.Tensor, py: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """Squared distance ``(N, S, S)`` from pixel centres to ``N`` segments ``a``->``b``.

    ``a`` and ``b`` are the ``(N, 2)`` endpoint ``(x, y)`` coordinates.
    """
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    d = b - a
    dx, dy = d[:, 0, None, None], d[:, 1, None, None]
    rx, ry = px - ax, py - ay
    t = ((rx * dx + ry * dy) / (dx * dx + dy * dy).clamp_min(1e-6)).clamp_(0.0, 1.0)
    ex, ey = rx - t * dx, ry - t * dy
    return ex * ex + ey * ey


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``(py, px)``, each ``(S, S)`` (row = y, column = x). Read-only."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    return py.contiguous(), px.contiguous()


def _draw_label(g: torch.Generator, num_classes: int) -> int:
    """An item's label: the first draw of its generator (so labels are known without rendering)."""
    return int(torch.randint(num_classes, (), generator=g))


def _render(g: torch.Generator, num_classes: int, size: int) -> dict[str, torch.Tensor]:
    """Render one item from generator ``g``; see :meth:`SyntheticShapes.__getitem__`."""
    label = _draw_label(g, num_classes)

    py, px = _pixel_grid(size)

    # Object geometry: bounding side in [30%, 50%] of the image, box fully inside the image.
    half = 0.5 * size * float(_uniform(g, _MIN_SCALE, _MAX_SCALE))
    centre = _uniform(g, half, size - half, (2,))
    mask = _shape_mask(label, (px - centre[0]) / half, (py - centre[1]) / half)

    # Smooth, muted background: a coarse grid of random colours, bilinearly upsampled.
    coarse = _uniform(g, 0.15, 0.85, (1, 3, _BACKGROUND_GRID, _BACKGROUND_GRID))
    image = torch.nn.functional.interpolate(
        coarse, size=(size, size), mode="bilinear", align_corners=True
    )[0]

    # Clutter: thin random lines (~1 px wide) and tiny specks (radius <= 1.6 px).
    scale = size / 64.0
    n_lines = int(torch.randint(2, 5, (), generator=g))
    ends = _uniform(g, 0.0, size, (2, n_lines, 2))
    line_hw = _uniform(g, 0.4, 0.75, (n_lines, 1, 1)) * scale
    n_specks = int(torch.randint(3, 9, (), generator=g))
    speck_xy = _uniform(g, 0.0, size, (n_specks, 2))
    speck_r = _uniform(g, 0.7, 1.6, (n_specks, 1, 1)) * scale
    speck_dx = px - speck_xy[:, 0, None, None]
    speck_dy = py - speck_xy[:, 1, None, None]
    covered = torch.cat(
        [
            _segment_distance_sq(px, py, ends[0], ends[1]) <= line_hw * line_hw,
            speck_dx * speck_dx + speck_dy * speck_dy <= speck_r * speck_r,
        ]
    )  # (N, S, S), later items painted over earlier ones
    palette = torch.cat(
        [
            torch.zeros(1, 3),
            _random_colours(g, n_lines + n_specks, sat=(0.0, 1.0), val=(0.1, 1.0)),
        ]
    )
    order = torch.arange(1, covered.shape[0] + 1, dtype=torch.int64)[:, None, None]
    top = (covered * order).amax(dim=0)  # (S, S): 1 + index of topmost clutter item, 0 = none
    image = torch.where(top > 0, palette[top].permute(2, 0, 1), image)

    # Object colour: saturated and bright; of three candidates keep the one farthest from the
    # mean colour underneath the object, so the object stays clearly visible.
    candidates = _random_colours(g, 3, sat=(0.7, 1.0), val=(0.7, 1.0))
    under = image[:, mask].mean(dim=1)
    colour = candidates[torch.linalg.vector_norm(candidates - under, dim=1).argmax()]
    image = torch.where(mask, colour[:, None, None], image)

    image = (image + _NOISE_STD * torch.randn(image.shape, generator=g)).clamp_(0.0, 1.0)
    return {
        "image": image.contiguous(),
        "label": torch.tensor(label, dtype=torch.int64),
        "mask": mask,
    }


class SyntheticShapes(Dataset):
    """Deterministic procedural dataset of one shape per image on a cluttered background.

    Item ``i`` depends only on ``(seed, i)`` (generator seed ``seed * 1_000_003 + i``), so it is
    identical across workers, epochs and access orders.

    Args:
        size: number of items.
        num_classes: 1..6; uses the first ``num_classes`` names of :data:`SHAPE_NAMES`.
        image_size: side ``S`` of the square images in pixels (>= 16).
        seed: dataset seed; different seeds give (practically) disjoint item sets.

    Each item is a dict with
        ``image``: float32 ``(3, S, S)`` RGB in [0, 1] (not normalised),
        ``label``: int64 scalar tensor in ``[0, num_classes)``,
        ``mask``: bool ``(S, S)``, exactly the pixels painted by the object,
        ``index``: int64 scalar tensor, the item's index (for per-item caches).
    """

    def __init__(
        self, size: int, *, num_classes: int = 6, image_size: int = 64, seed: int = 0
    ) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        if not 1 <= num_classes <= len(SHAPE_NAMES):
            raise ValueError(
                f"num_classes must be between 1 and {len(SHAPE_NAMES)} "
                f"(available shapes: {', '.join(SHAPE_NAMES)}), got {num_classes}"
            )
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        self.size = int(size)
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.seed = int(seed)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the classes in label order (length ``num_classes``)."""
        return SHAPE_NAMES[: self.num_classes]

    @property
    def targets(self) -> list[int]:
        """Every item's label, in index order, without rendering the images (torchvision's
        ``targets``: the class-stratified validation subset reads it)."""
        return [
            _draw_label(
                torch.Generator().manual_seed(self.seed * _SEED_STRIDE + i), self.num_classes
            )
            for i in range(self.size)
        ]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Render item ``index`` (negative indices count from the end)."""
        index = int(index)
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index out of range for dataset of size {self.size}")
        g = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + index)
        return {**_render(g, self.num_classes, self.image_size), "index": torch.tensor(index)}


def export_images(
    directory: str | Path,
    count: int,
    *,
    num_classes: int = 6,
    image_size: int = 64,
    seed: int = 0,
) -> list[Path]:
    """Write items ``0 .. count-1`` of ``SyntheticShapes`` as uint8 RGB PNG files.

    Files are named ``{index:04d}_{classname}.png`` inside ``directory`` (created if missing).
    Returns the written paths in index order.
    """
    from PIL import Image

    dataset = SyntheticShapes(count, num_classes=num_classes, image_size=image_size, seed=seed)
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        item = dataset[index]
        pixels = (item["image"] * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
        path = out_dir / f"{index:04d}_{dataset.class_names[int(item['label'])]}.png"
        image = Image.fromarray(pixels)
        atomic_write(path, lambda temporary, image=image: image.save(temporary, format="PNG"))
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: export synthetic images as PNG files."""
    parser = argparse.ArgumentParser(
        prog="python -m lcam.data",
        description="Write SyntheticShapes items as PNG files named {index:04d}_{class}.png.",
    )
    parser.add_argument("outdir", type=Path, help="output directory (created if missing)")
    parser.add_argument("--count", type=int, default=16, help="number of images (default 16)")
    parser.add_argument("--num-classes", type=int, default=len(SHAPE_NAMES))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.count < 0:
        parser.error("--count must be >= 0")
    try:
        paths = export_images(
            args.outdir,
            args.count,
            num_classes=args.num_classes,
            image_size=args.image_size,
            seed=args.seed,
        )
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {len(paths)} images to {args.outdir}")
