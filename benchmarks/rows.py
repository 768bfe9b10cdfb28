"""One row of the results (``Row``, the JSON's fields as they are) and the markdown table."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One (model, method) measurement; the JSON file holds these fields as they are.

    Pass counts are per image, counted with hooks on the first and last layer of the network:
    ``forward_passes`` ran the whole network, ``forward_tail_passes`` only the layers after the
    target layer; ``backward_passes`` reached the first layer, ``backward_tail_passes`` stopped
    earlier. ``reported_*`` are what the lcam ``Explanation`` says, when there is one.
    """

    model: str
    method: str
    status: str = "ok"  # ok | skipped | n/a | error
    settings: str = ""
    ms_per_image: float | None = None
    ratio: float | None = None
    forward_passes: float | None = None
    forward_tail_passes: float | None = None
    backward_passes: float | None = None
    backward_tail_passes: float | None = None
    peak_rss_mb: float | None = None
    peak_tensor_mb: float | None = None
    memory_ratio: float | None = None
    note: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    images_per_call: int | None = None
    runs: int | None = None
    calls_per_run: int | None = None
    run_ms_per_image: list[float] = field(default_factory=list)
    reference_forward_ms_per_image: float | None = None
    reference_peak_tensor_mb: float | None = None
    scaled_ms_per_image: float | None = None
    reported_forward_passes: float | None = None
    reported_backward_passes: float | None = None
    baseline_rss_mb: float | None = None
    seconds: float | None = None


def number(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits (integers above that), ``""`` for ``None``."""
    if value is None:
        return ""
    if value == 0 or abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:.{max(0, digits - 1 - math.floor(math.log10(abs(value))))}f}"


def _count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else number(value)


def _passes(full: float | None, tail: float | None) -> str:
    if full is None:
        return ""
    parts = [_count(full)] if full or not tail else []
    if tail:
        parts.append(f"{_count(tail)} tail")
    return " + ".join(parts)


def _rss(peak: float | None, baseline: float | None) -> str:
    if not peak:
        return ""
    if baseline is None:
        return f"{peak:,.0f}"
    return f"{peak:,.0f} (+{max(0.0, peak - baseline):,.0f})"


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table."""
    header = [
        "model",
        "method",
        "settings",
        "ms/image",
        "ratio to forward",
        "fwd passes/image",
        "bwd passes/image",
        "peak tensor MB",
        "memory ratio",
        "peak RSS MB",
        "note",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        note = row.note if row.status in ("ok", "") else f"{row.status}: {row.note}"
        cells = [
            row.model,
            row.method,
            row.settings,
            number(row.ms_per_image),
            number(row.ratio),
            _passes(row.forward_passes, row.forward_tail_passes),
            _passes(row.backward_passes, row.backward_tail_passes),
            number(row.peak_tensor_mb),
            number(row.memory_ratio),
            _rss(row.peak_rss_mb, row.baseline_rss_mb),
            note.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(
    path: Path, machine: dict[str, Any], rows: Sequence[Row], settings: dict[str, Any]
) -> None:
    """Write ``{"machine", "settings", "rows"}`` to ``path`` (creating its folder)."""
    payload = {
        "machine": machine,
        "settings": settings,
        "rows": [dataclasses.asdict(row) for row in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
