"""HTML building blocks of the self-contained report page: style sheet, embedded PNG images,
tables with the best value of each column marked, figures and the page itself.

The page needs nothing but a browser: the style sheet is inline, every image is embedded as a
base64 PNG ``data:`` URI and the curves are inline SVG, so it opens offline and can be mailed or
archived as one file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from lcam.evaluation.report.tables import (
    TRAINED_MARK,
    Rows,
    cell_text,
    column_groups,
    column_order,
    is_number,
    trained_set,
)
from lcam.evaluation.specs import column_direction

__all__ = ["describe", "figure", "html_table", "note", "page", "png_data_uri"]

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em;
       color: #222; background: #fff; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em;
     border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; vertical-align: top; }
th { background: #f0f0f0; } td.name, th.name { text-align: left; }
td.best { font-weight: bold; background: #e8f4e8; }
td.trained { color: #865; } th.group { text-align: center; background: #e4e4ec; }
.note { color: #555; font-size: .85em; }
.wide { max-width: 100%; overflow-x: auto; }
details { margin: .5em 0; } summary { cursor: pointer; color: #245; }
figure { display: inline-block; margin: 0 .3em .3em 0; text-align: center; }
figure img { width: 128px; height: auto; image-rendering: pixelated; display: block; }
figcaption { font-size: .75em; color: #444; max-width: 128px; overflow-wrap: anywhere; }
.charts svg { margin-right: 1.5em; }
.pair { display: inline-block; border: 1px solid #ddd; padding: .2em; margin: 0 .3em .3em 0; }
"""

_ARROWS = {-1: " ↓", 1: " ↑", 0: ""}


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


def note(text: str) -> str:
    """A grey paragraph (``text`` is HTML)."""
    return f'<p class="note">{text}</p>'


def _best_values(rows: Rows, columns: Sequence[str]) -> dict[str, float]:
    """The best value of each column with a known direction that differs between rows."""
    best: dict[str, float] = {}
    if len(rows) < 2:
        return best
    for column in columns:
        direction = column_direction(column)
        values = [float(row[column]) for row in rows if is_number(row.get(column))]
        if direction and len(values) >= 2 and min(values) != max(values):
            best[column] = max(values) if direction > 0 else min(values)
    return best


def _breakable(name: str) -> str:
    """``name`` escaped, with line-break opportunities after ``_`` and ``@`` (long column
    names wrap instead of widening the table)."""
    return html.escape(name).replace("_", "_<wbr>").replace("@", "@<wbr>")


def html_table(
    rows: Rows,
    columns: Sequence[str] | None = None,
    *,
    mark_best: bool = False,
    name_columns: int = 1,
    table_id: str = "",
    grouped: bool = False,
) -> str:
    """A ``<table>`` of ``columns`` (default: every column) of ``rows``.

    With ``mark_best``, headers get the better direction's arrow and the best value of each
    column is bold (:func:`lcam.evaluation.specs.column_direction`). The first
    ``name_columns`` columns are left-aligned names. A value whose column the row's method
    trains on (its ``trained_on``) ends in the trained mark (``*``). With ``grouped``, the
    columns are reordered into :func:`~lcam.evaluation.report.tables.column_groups` and, when
    some row trains on some column, a first header row names the groups.
    """
    if not rows:
        return note("No rows.")
    columns = list(columns) if columns is not None else column_order(rows)
    groups = column_groups(rows, columns) if grouped else [("", columns)]
    columns = [column for _, members in groups for column in members]
    best = _best_values(rows, columns) if mark_best else {}
    name_class = ' class="name"'
    group_row = ""
    if len(groups) > 1:
        group_row = (
            "<tr>"
            + "".join(
                f'<th class="group" colspan="{len(members)}">{html.escape(name)}</th>'
                for name, members in groups
            )
            + "</tr>"
        )
    head = "".join(
        f"<th{name_class if index < name_columns else ''}>{_breakable(column)}"
        f"{_ARROWS[column_direction(column)] if mark_best else ''}</th>"
        for index, column in enumerate(columns)
    )
    body = []
    for row in rows:
        cells = []
        for index, column in enumerate(columns):
            value = row.get(column)
            classes = ["name"] if index < name_columns else []
            if column in best and is_number(value) and float(value) == best[column]:
                classes.append("best")
            text = cell_text(row, column)
            if column in trained_set(row) and text.endswith(TRAINED_MARK):
                classes.append("trained")
            attribute = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attribute}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    identifier = f' id="{html.escape(table_id)}"' if table_id else ""
    return (
        f"<table{identifier}>\n<thead>{group_row}<tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(body)
        + "\n</tbody>\n</table>"
    )


def figure(image: Any, caption: str) -> str:
    """An embedded image with its caption."""
    return (
        f'<figure><img src="{png_data_uri(image)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def describe(example: Mapping[str, Any]) -> str:
    """``"predicted <class>, label <class>"`` of a kept example."""
    prediction = example.get("prediction_name") or example.get("prediction")
    label = example.get("label_name") or example.get("label")
    text = f"predicted {prediction}"
    return text if label is None else f"{text}, label {label}"


def page(title: str, sections: Sequence[str]) -> str:
    """The whole HTML document."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
