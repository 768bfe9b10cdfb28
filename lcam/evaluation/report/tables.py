"""The comparison rows as plain tables: CSV and Markdown, and the cell formatting and column
groups they share with the HTML page.

A row's ``trained_on`` entry names the columns its method's training objective optimises
(:class:`lcam.evaluation.MethodComparison`). The CSV keeps it as a column; the Markdown and the
page instead mark each such value with :data:`TRAINED_MARK` and put the metric columns any row
trains on in one group, "metrics a head trains on", apart from the "independent metrics".
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lcam._io import atomic_write_text
from lcam.evaluation.specs import is_metric_column

__all__ = [
    "INDEPENDENT_GROUP",
    "TRAINED_GROUP",
    "TRAINED_LEGEND",
    "TRAINED_MARK",
    "TRAINED_ON",
    "Rows",
    "cell_text",
    "column_groups",
    "column_order",
    "format_value",
    "is_number",
    "markdown_table",
    "trained_set",
    "write_csv",
]

TRAINED_ON = "trained_on"
"""The row entry naming, separated by spaces, the columns the row's method trains on."""

TRAINED_MARK = "*"
"""Appended to a value whose column the row's method trains on."""

TRAINED_GROUP = "metrics a head trains on"
INDEPENDENT_GROUP = "independent metrics"

TRAINED_LEGEND = (
    f"A value marked {TRAINED_MARK} is one the row's method trains on: its training objective "
    "optimises that metric (the trained_on column of comparison.csv, derived from the head's "
    "loss settings), so it is not independent evidence. Classic methods train on nothing."
)

Rows = Sequence[Mapping[str, Any]]


def column_order(rows: Rows) -> list[str]:
    """All keys of ``rows`` in order of first appearance."""
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    return columns


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def format_value(value: Any) -> str:
    """A cell's text: ``—`` for a missing value, integers plain, floats to about 4 digits."""
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


def trained_set(row: Mapping[str, Any]) -> frozenset[str]:
    """The columns ``row``'s method trains on (its ``trained_on`` entry: a space-separated
    string, as in the CSV, or a sequence of names)."""
    value = row.get(TRAINED_ON) or ()
    return frozenset(value.split() if isinstance(value, str) else value)


def cell_text(row: Mapping[str, Any], column: str) -> str:
    """``row[column]`` formatted, with :data:`TRAINED_MARK` when the row trains on ``column``."""
    value = row.get(column)
    text = format_value(value)
    return text + TRAINED_MARK if value is not None and column in trained_set(row) else text


def column_groups(rows: Rows, columns: Sequence[str] | None = None) -> list[tuple[str, list[str]]]:
    """``columns`` (default every column but ``trained_on``) as ``[(group, columns)]``: the
    leading ``""`` group (method, images, passes, time: no metric), then :data:`TRAINED_GROUP`
    (the metric columns some row trains on) and :data:`INDEPENDENT_GROUP`, each in its original
    order. Without any trained column: one ``""`` group of all columns, unchanged."""
    if columns is None:
        columns = [column for column in column_order(rows) if column != TRAINED_ON]
    trained = frozenset().union(*(trained_set(row) for row in rows))
    if not trained & set(columns):
        return [("", list(columns))]
    groups = {"": [], TRAINED_GROUP: [], INDEPENDENT_GROUP: []}
    for column in columns:
        if column in trained:
            groups[TRAINED_GROUP].append(column)
        elif is_metric_column(column):
            groups[INDEPENDENT_GROUP].append(column)
        else:
            groups[""].append(column)
    return [(name, group) for name, group in groups.items() if group]


def _csv_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def write_csv(path: str | Path, rows: Rows) -> Path:
    """Write ``rows`` (columns in :func:`column_order`, missing values empty), atomically."""
    columns = column_order(rows)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row.get(column)) for column in columns])
    return atomic_write_text(path, buffer.getvalue())


def _markdown(rows: Rows, columns: Sequence[str]) -> str:
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if c == "method" else "---:" for c in columns) + "|",
    ]
    for row in rows:
        cells = [cell_text(row, column).replace("|", "\\|") for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(rows: Rows) -> str:
    """A Markdown table of every column but ``trained_on``, numbers right-aligned.

    When some row trains on some column, two tables instead, each under its group's name: the
    metrics a head trains on (values marked :data:`TRAINED_MARK`, legend below), then the
    independent metrics with the cost columns; ``method`` leads both."""
    groups = column_groups(rows)
    if len(groups) == 1:
        return _markdown(rows, groups[0][1])
    lead = dict(groups).get("", [])
    names = ["method"] if "method" in lead else []
    tables = [
        f"**{name.capitalize()}**\n\n"
        + _markdown(rows, names + columns if name == TRAINED_GROUP else lead + columns)
        for name, columns in groups
        if name
    ]
    return "\n".join(tables) + f"\n{TRAINED_LEGEND}\n"
