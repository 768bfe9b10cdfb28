"""The comparison rows as plain tables: CSV and Markdown, and the cell formatting they share
with the HTML page."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lcam._io import atomic_write_text

__all__ = [
    "Rows",
    "column_order",
    "format_value",
    "is_number",
    "markdown_table",
    "write_csv",
]

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


def markdown_table(rows: Rows) -> str:
    """A Markdown table of every column, numbers right-aligned."""
    columns = column_order(rows)
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if c == "method" else "---:" for c in columns) + "|",
    ]
    for row in rows:
        cells = [format_value(row.get(column)).replace("|", "\\|") for column in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
