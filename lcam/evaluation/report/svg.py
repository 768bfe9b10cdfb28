"""Inline SVG line charts (no plotting library, nothing fetched: the page stays one file)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

__all__ = ["PALETTE", "line_chart", "trapezoid"]

# Colours of the methods in the charts (colour-blind friendly palette, then repeats).
PALETTE = (
    "#0072b2",
    "#d55e00",
    "#009e73",
    "#cc79a7",
    "#e69f00",
    "#56b4e9",
    "#f0e442",
    "#000000",
    "#999999",
    "#8c510a",
)


def line_chart(
    title: str,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    width: int = 420,
    height: int = 300,
) -> str:
    """An inline SVG line chart: ``series`` maps a legend label to ``(xs, ys)``."""
    left, right, top, bottom = 52, 12, 28, 44
    legend_height = 16 * len(series)
    total_height = height + legend_height
    xs_all = [float(x) for xs, _ in series.values() for x in xs]
    ys_all = [float(y) for _, ys in series.values() for y in ys if math.isfinite(float(y))]
    x_min, x_max = (min(xs_all), max(xs_all)) if xs_all else (0.0, 1.0)
    if y_range is not None:
        y_min, y_max = y_range
    else:
        y_min, y_max = (min(ys_all), max(ys_all)) if ys_all else (0.0, 1.0)
    if x_max == x_min:
        x_max = x_min + 1.0
    if y_max == y_min:
        y_max = y_min + 1.0
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x_min) / (x_max - x_min) * plot_w

    def sy(y: float) -> float:
        return top + (1 - (y - y_min) / (y_max - y_min)) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_height}" '
        f'viewBox="0 0 {width} {total_height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" font-size="13" '
        f'font-weight="bold">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#888"/>',
    ]
    for tick in range(5):
        fx = x_min + (x_max - x_min) * tick / 4
        fy = y_min + (y_max - y_min) * tick / 4
        parts.append(
            f'<line x1="{sx(fx):.1f}" y1="{top + plot_h}" x2="{sx(fx):.1f}" '
            f'y2="{top + plot_h + 4}" stroke="#888"/>'
            f'<text x="{sx(fx):.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
            f'font-size="10">{fx:.3g}</text>'
            f'<line x1="{left - 4}" y1="{sy(fy):.1f}" x2="{left + plot_w}" y2="{sy(fy):.1f}" '
            f'stroke="#eee"/>'
            f'<text x="{left - 6}" y="{sy(fy) + 3:.1f}" text-anchor="end" '
            f'font-size="10">{fy:.3g}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{top + plot_h + 32}" text-anchor="middle" '
        f'font-size="11">{html.escape(x_label)}</text>'
        f'<text x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">{html.escape(y_label)}</text>'
    )
    for index, (label, (xs, ys)) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        points = " ".join(
            f"{sx(float(x)):.1f},{sy(float(y)):.1f}"
            for x, y in zip(xs, ys, strict=False)
            if math.isfinite(float(y))
        )
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}">'
            f"<title>{html.escape(label)}</title></polyline>"
        )
        legend_y = height + 12 + 16 * index
        parts.append(
            f'<line x1="{left}" y1="{legend_y - 4}" x2="{left + 18}" y2="{legend_y - 4}" '
            f'stroke="{colour}" stroke-width="3"/>'
            f'<text x="{left + 24}" y="{legend_y}" font-size="11">{html.escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def trapezoid(xs: Sequence[float], ys: Sequence[float]) -> float:
    return float(
        sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(min(len(xs), len(ys)) - 1))
    )
