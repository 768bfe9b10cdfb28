"""The sections of the report page: metrics (headline table, then every column folded away),
deletion/insertion curves, gallery, misclassified images, unit alignment and sanity check."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from lcam.evaluation.deletion_baselines import auc_columns
from lcam.evaluation.options import DELETION_BASELINES
from lcam.evaluation.report.html import describe, figure, html_table, note
from lcam.evaluation.report.svg import line_chart, trapezoid
from lcam.evaluation.report.tables import (
    TRAINED_LEGEND,
    TRAINED_ON,
    Rows,
    column_order,
    trained_set,
)
from lcam.evaluation.specs import is_headline

__all__ = [
    "curves_section",
    "gallery_section",
    "metrics_section",
    "misclassified_section",
    "sanity_section",
    "unit_alignment_section",
]


def metrics_section(rows: Rows, table_id: str = "metrics") -> str:
    """The headline table (``id=table_id``: method, passes, time, AD/IC, in-mask energy,
    pointing game, deletion/insertion AUC), then every column of the rows in a folded
    ``<details>`` (``id=table_id + "-all"``). Both group the metric columns a row's method
    trains on apart from the independent ones and mark its values; a legend follows when some
    row trains on some column."""
    columns = [column for column in column_order(rows) if column != TRAINED_ON]
    headline = [column for column in columns if is_headline(column)]
    trained = any(trained_set(row) & set(columns) for row in rows)
    return (
        html_table(rows, headline, mark_best=True, table_id=table_id, grouped=True)
        + (note(html.escape(TRAINED_LEGEND)) if trained else "")
        + f"\n<details><summary>All {len(columns)} columns (per-threshold ROAD, mask IoU, "
        'image count, ...)</summary>\n<div class="wide">'
        + html_table(rows, columns, mark_best=True, table_id=f"{table_id}-all", grouped=True)
        + "</div></details>"
    )


def curves_section(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> str:
    """One chart per deletion/insertion curve and baseline present in ``curves``
    (``{method: {"fractions", "deletion", "deletion_blur", "insertion", ...}}``)."""
    if not curves:
        return note("No deletion/insertion curves (metric not selected).")
    charts = []
    for curve, better in (("deletion", "lower is better"), ("insertion", "higher is better")):
        for baseline in DELETION_BASELINES:
            kind = auc_columns(baseline)[curve].replace("_auc", "")
            series = {}
            for method, values in curves.items():
                if kind in values:
                    xs, ys = list(values["fractions"]), list(values[kind])
                    series[f"{method} (AUC {trapezoid(xs, ys):.3f})"] = (xs, ys)
            if not series:
                continue
            moved = "removed to" if curve == "deletion" else "inserted into"
            charts.append(
                line_chart(
                    f"{curve.capitalize()}, {baseline} baseline ({better})",
                    series,
                    x_label=f"share of pixels {moved} the {baseline} image",
                    y_label="probability of the class",
                    y_range=(0.0, 1.0),
                )
            )
    return '<div class="charts">' + "".join(charts) + "</div>"


def gallery_section(gallery: Sequence[Mapping[str, Any]]) -> str:
    if not gallery:
        return note("No gallery images.")
    methods = column_order([example["overlays"] for example in gallery])
    head = "<th>image</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    rows = []
    for example in gallery:
        cells = [f"<td>{figure(example['image'], describe(example))}</td>"]
        for method in methods:
            overlay = example["overlays"].get(method)
            cells.append(f"<td>{figure(overlay, method) if overlay is not None else '—'}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="wide"><table id="gallery"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def misclassified_section(misclassified: Sequence[Mapping[str, Any]]) -> str:
    if not misclassified:
        return note("No misclassified images (or no labels given).")
    methods = column_order([example["overlays"] for example in misclassified])
    head = "<th>image</th>" + "".join(
        f"<th>{html.escape(m)}<br>predicted | true class</th>" for m in methods
    )
    rows = []
    for example in misclassified:
        predicted = example.get("prediction_name") or example.get("prediction")
        true = example.get("label_name") or example.get("label")
        cells = [f"<td>{figure(example['image'], describe(example))}</td>"]
        for method in methods:
            pair = example["overlays"].get(method)
            if pair is None:
                cells.append("<td>—</td>")
                continue
            cells.append(
                '<td><div class="pair">'
                + figure(pair["predicted"], f"{method}: {predicted}")
                + figure(pair["true"], f"{method}: {true}")
                + "</div></td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="wide"><table id="misclassified"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def unit_alignment_section(rows: Rows, max_rows: int = 64) -> str:
    if not rows:
        return note("No units.")
    ordered = sorted(rows, key=lambda r: -float(r.get("iou") or 0.0))
    shown = ordered[:max_rows]
    counts: dict[str, int] = {}
    for row in rows:
        name = str(row.get("class_name", row.get("class")))
        counts[name] = counts.get(name, 0) + 1
    summary = ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(counts.items()))
    text = f"{len(rows)} channels; best class per channel (count): {summary}."
    if len(rows) > max_rows:
        text += f" Showing the {max_rows} channels with the highest IoU."
    return note(text) + html_table(shown, name_columns=1, table_id="unit-alignment")


def sanity_section(rows: Rows) -> str:
    if not rows:
        return note("No sanity check.")
    methods = column_order([{str(r["method"]): None} for r in rows])
    pivot: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for row in rows:
        key = (row["mode"], row["step"], row["layer"])
        entry = pivot.setdefault(key, dict(zip(("mode", "step", "layer"), key, strict=True)))
        entry[str(row["method"])] = row["spearman"]
    table = html_table(list(pivot.values()), name_columns=3, table_id="sanity")
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
                line_chart(
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
