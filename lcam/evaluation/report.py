"""Write the method comparison as CSV, Markdown and one self-contained HTML page.

The HTML page needs nothing but a browser: the style sheet is inline, every image is embedded
as a base64 PNG ``data:`` URI and the curves are inline SVG, so it opens offline and can be
mailed or archived as one file.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["column_order", "log_to_wandb", "png_data_uri", "write_report"]

Rows = Sequence[Mapping[str, Any]]

# Which direction is better, by column name prefix (used for the arrows and the bold best value).
_LOWER_BETTER = (
    "ad@",
    "road_morf",
    "deletion_auc",
    "max_sensitivity",
    "ms_per_image",
    "forward_passes",
    "backward_passes",
)
_HIGHER_BETTER = (
    "ic@",
    "road_lerf",
    "insertion_auc",
    "pointing_game",
    "energy_pointing_game",
    "mask_iou",
)
# Colours of the methods in the charts (colour-blind friendly palette, then repeats).
_PALETTE = (
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

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em;
       color: #222; background: #fff; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em;
     border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; vertical-align: top; }
th { background: #f0f0f0; } td.name, th.name { text-align: left; }
td.best { font-weight: bold; background: #e8f4e8; }
.note { color: #555; font-size: .85em; }
figure { display: inline-block; margin: 0 .3em .3em 0; text-align: center; }
figure img { width: 128px; height: auto; image-rendering: pixelated; display: block; }
figcaption { font-size: .75em; color: #444; max-width: 128px; overflow-wrap: anywhere; }
.charts svg { margin-right: 1.5em; }
.pair { display: inline-block; border: 1px solid #ddd; padding: .2em; margin: 0 .3em .3em 0; }
"""


def png_data_uri(image: Any) -> str:
    """``data:image/png;base64,...`` of an image.

    Accepts ``(H, W, 3)`` / ``(H, W)`` uint8 arrays or tensors, or float ``(3, H, W)`` /
    ``(H, W, 3)`` / ``(H, W)`` in [0, 1].
    """
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dim() == 3 and tensor.shape[0] in (1, 3) and tensor.shape[-1] not in (1, 3):
            tensor = tensor.movedim(0, -1)
        image = tensor.numpy()
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def column_order(rows: Rows) -> list[str]:
    """All keys of ``rows`` in order of first appearance."""
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    return columns


def _direction(column: str) -> int:
    """-1 lower is better, +1 higher is better, 0 unknown."""
    if column.startswith(_LOWER_BETTER):
        return -1
    if column.startswith(_HIGHER_BETTER):
        return 1
    return 0


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _format(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def _csv_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def _write_csv(path: Path, rows: Rows) -> Path:
    columns = column_order(rows)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_value(row.get(column)) for column in columns])
    return path


def _markdown_table(rows: Rows) -> str:
    columns = column_order(rows)
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if c == "method" else "---:" for c in columns) + "|",
    ]
    for row in rows:
        cells = [_format(row.get(column)).replace("|", "\\|") for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _best_values(rows: Rows, columns: Sequence[str]) -> dict[str, float]:
    best: dict[str, float] = {}
    if len(rows) < 2:
        return best
    for column in columns:
        direction = _direction(column)
        values = [float(row[column]) for row in rows if _is_number(row.get(column))]
        if direction and len(values) >= 2 and min(values) != max(values):
            best[column] = max(values) if direction > 0 else min(values)
    return best


def _html_table(
    rows: Rows, *, mark_best: bool = False, name_columns: int = 1, table_id: str = ""
) -> str:
    if not rows:
        return '<p class="note">No rows.</p>'
    columns = column_order(rows)
    best = _best_values(rows, columns) if mark_best else {}
    arrow = {-1: " ↓", 1: " ↑", 0: ""}
    name_class = ' class="name"'
    head = "".join(
        f"<th{name_class if index < name_columns else ''}>"
        f"{html.escape(column)}{arrow[_direction(column)] if mark_best else ''}</th>"
        for index, column in enumerate(columns)
    )
    body = []
    for row in rows:
        cells = []
        for index, column in enumerate(columns):
            value = row.get(column)
            classes = []
            if index < name_columns:
                classes.append("name")
            if column in best and _is_number(value) and float(value) == best[column]:
                classes.append("best")
            attribute = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attribute}>{html.escape(_format(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    identifier = f' id="{html.escape(table_id)}"' if table_id else ""
    return (
        f"<table{identifier}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(body)
        + "\n</tbody>\n</table>"
    )


def _line_chart(
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
        colour = _PALETTE[index % len(_PALETTE)]
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


def _trapezoid(xs: Sequence[float], ys: Sequence[float]) -> float:
    return float(
        sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(min(len(xs), len(ys)) - 1))
    )


def _curves_section(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> str:
    if not curves:
        return '<p class="note">No deletion/insertion curves (metric not selected).</p>'
    charts = []
    for kind, note in (("deletion", "lower is better"), ("insertion", "higher is better")):
        series = {}
        for method, curve in curves.items():
            xs, ys = list(curve["fractions"]), list(curve[kind])
            series[f"{method} (AUC {_trapezoid(xs, ys):.3f})"] = (xs, ys)
        charts.append(
            _line_chart(
                f"{kind.capitalize()} ({note})",
                series,
                x_label="share of pixels " + ("removed" if kind == "deletion" else "inserted"),
                y_label="probability of the class",
                y_range=(0.0, 1.0),
            )
        )
    return '<div class="charts">' + "".join(charts) + "</div>"


def _figure(image: Any, caption: str) -> str:
    return (
        f'<figure><img src="{png_data_uri(image)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _describe(example: Mapping[str, Any]) -> str:
    prediction = example.get("prediction_name") or example.get("prediction")
    label = example.get("label_name") or example.get("label")
    text = f"predicted {prediction}"
    return text if label is None else f"{text}, label {label}"


def _gallery_section(gallery: Sequence[Mapping[str, Any]]) -> str:
    if not gallery:
        return '<p class="note">No gallery images.</p>'
    methods = column_order([example["overlays"] for example in gallery])
    head = "<th>image</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    rows = []
    for example in gallery:
        cells = [f"<td>{_figure(example['image'], _describe(example))}</td>"]
        for method in methods:
            overlay = example["overlays"].get(method)
            cells.append(f"<td>{_figure(overlay, method) if overlay is not None else '—'}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table id="gallery"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _misclassified_section(misclassified: Sequence[Mapping[str, Any]]) -> str:
    if not misclassified:
        return '<p class="note">No misclassified images (or no labels given).</p>'
    methods = column_order([example["overlays"] for example in misclassified])
    head = "<th>image</th>" + "".join(
        f"<th>{html.escape(m)}<br>predicted | true class</th>" for m in methods
    )
    rows = []
    for example in misclassified:
        predicted = example.get("prediction_name") or example.get("prediction")
        true = example.get("label_name") or example.get("label")
        cells = [f"<td>{_figure(example['image'], _describe(example))}</td>"]
        for method in methods:
            pair = example["overlays"].get(method)
            if pair is None:
                cells.append("<td>—</td>")
                continue
            cells.append(
                '<td><div class="pair">'
                + _figure(pair["predicted"], f"{method}: {predicted}")
                + _figure(pair["true"], f"{method}: {true}")
                + "</div></td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table id="misclassified"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _unit_alignment_section(rows: Rows, max_rows: int = 64) -> str:
    if not rows:
        return '<p class="note">No units.</p>'
    ordered = sorted(rows, key=lambda r: -float(r.get("iou") or 0.0))
    shown = ordered[:max_rows]
    counts: dict[str, int] = {}
    for row in rows:
        name = str(row.get("class_name", row.get("class")))
        counts[name] = counts.get(name, 0) + 1
    summary = ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(counts.items()))
    note = f"{len(rows)} channels; best class per channel (count): {summary}."
    if len(rows) > max_rows:
        note += f" Showing the {max_rows} channels with the highest IoU."
    return f'<p class="note">{note}</p>' + _html_table(
        shown, name_columns=1, table_id="unit-alignment"
    )


def _sanity_section(rows: Rows) -> str:
    if not rows:
        return '<p class="note">No sanity check.</p>'
    methods = column_order([{str(r["method"]): None} for r in rows])
    pivot: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for row in rows:
        key = (row["mode"], row["step"], row["layer"])
        entry = pivot.setdefault(key, dict(zip(("mode", "step", "layer"), key, strict=True)))
        entry[str(row["method"])] = row["spearman"]
    table = _html_table(list(pivot.values()), name_columns=3, table_id="sanity")
    charts = []
    for mode in ("cascading", "independent"):
        series = {}
        for method in methods:
            points = sorted(
                (int(r["step"]), float(r["spearman"]))
                for r in rows
                if r["mode"] == mode and str(r["method"]) == method
            )
            if points:
                series[method] = ([p[0] for p in points], [p[1] for p in points])
        if series:
            charts.append(
                _line_chart(
                    f"{mode.capitalize()} randomisation",
                    series,
                    x_label="step (layers randomised, top first)"
                    if mode == "cascading"
                    else "step (one layer, top first)",
                    y_label="Spearman rank correlation",
                    y_range=(-1.0, 1.0),
                )
            )
    return (
        '<p class="note">Spearman rank correlation between the maps of the trained model and '
        "of the randomised one (lower means the explanation depends on the weights, as it "
        "should).</p>" + '<div class="charts">' + "".join(charts) + "</div>" + table
    )


def write_report(
    rows: Rows,
    run_dir: str | Path,
    *,
    curves: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    gallery: Sequence[Mapping[str, Any]] | None = None,
    misclassified: Sequence[Mapping[str, Any]] | None = None,
    unit_alignment: Rows | None = None,
    sanity: Rows | None = None,
    title: str = "lcam method comparison",
) -> dict[str, Path]:
    """Write ``comparison.csv``, ``comparison.md`` and a self-contained ``report.html``.

    Args:
        rows: one dict per method (``MethodComparison.compute()``).
        run_dir: output folder (created if missing).
        curves: ``{method: {"fractions", "deletion", "insertion"}}`` mean curves.
        gallery: examples ``{"image", "overlays": {method: image}, "prediction", "label", ...}``
            (images ``(H, W, 3)`` uint8 or float in [0, 1]).
        misclassified: examples whose ``overlays`` are ``{method: {"predicted", "true"}}``.
        unit_alignment: rows of :func:`lcam.evaluation.dissection.unit_alignment`
            (``channel``, ``class``, ``class_name``, ``iou``); also written to
            ``unit_alignment.csv``.
        sanity: rows of :func:`lcam.evaluation.sanity.model_randomisation` (``mode``, ``step``,
            ``layer``, ``method``, ``spearman``, ...); also written to ``sanity.csv``.
        title: page title.

    Returns:
        ``{"csv", "markdown", "html"}`` paths, plus ``"sanity_csv"`` / ``"unit_alignment_csv"``
        when those rows are given.
    """
    directory = Path(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    rows = [dict(row) for row in rows]
    paths = {
        "csv": _write_csv(directory / "comparison.csv", rows),
        "markdown": directory / "comparison.md",
        "html": directory / "report.html",
    }
    paths["markdown"].write_text(f"# {title}\n\n" + _markdown_table(rows), encoding="utf-8")
    if sanity:
        paths["sanity_csv"] = _write_csv(directory / "sanity.csv", sanity)
    if unit_alignment:
        paths["unit_alignment_csv"] = _write_csv(directory / "unit_alignment.csv", unit_alignment)

    images = max((int(row.get("images", 0) or 0) for row in rows), default=0)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{len(rows)} methods on {images} images; generated {stamp}. '
        "↓ lower is better, ↑ higher is better; the best value of each column is bold. AD/IC "
        "in percent (the L-CAM/TAME protocol), ROAD as the share of surviving top-1 classes, "
        "passes per image.</p>",
        "<h2>Metrics</h2>",
        _html_table(rows, mark_best=True, table_id="metrics"),
        "<h2>Deletion and insertion curves</h2>",
        _curves_section(curves or {}),
        "<h2>Gallery</h2>",
        _gallery_section(gallery or []),
        "<h2>Misclassified images</h2>",
        _misclassified_section(misclassified or []),
    ]
    if unit_alignment is not None:
        sections += ["<h2>Unit alignment</h2>", _unit_alignment_section(unit_alignment)]
    if sanity is not None:
        sections += ["<h2>Sanity check: model randomisation</h2>", _sanity_section(sanity)]
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
    temporary = paths["html"].with_name(paths["html"].name + ".partial")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(paths["html"])
    return paths


def log_to_wandb(logger: Any, rows: Rows, key: str = "test/method_comparison") -> bool:
    """Log ``rows`` as a ``wandb.Table`` through every Lightning ``WandbLogger`` in ``logger``.

    Args:
        logger: a logger, an iterable of loggers (``trainer.loggers``) or ``None``.
        rows: one dict per method.
        key: the table's name in W&B.

    Returns:
        ``True`` when at least one ``WandbLogger`` received the table.
    """
    from pytorch_lightning.loggers import WandbLogger

    if logger is None:
        return False
    loggers: Iterable[Any] = logger if isinstance(logger, Iterable) else [logger]
    columns = column_order(rows)
    data = [[_table_value(row.get(column)) for column in columns] for row in rows]
    logged = False
    for candidate in loggers:
        if isinstance(candidate, WandbLogger):
            candidate.log_table(key=key, columns=columns, data=data)
            logged = True
    return logged


def _table_value(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
