"""Write the method comparison as CSV, Markdown and one self-contained HTML page.

- :mod:`~lcam.evaluation.report.tables`: CSV and Markdown tables, cell formatting;
- :mod:`~lcam.evaluation.report.html`: page building blocks (embedded PNGs, tables);
- :mod:`~lcam.evaluation.report.svg`: inline SVG line charts;
- :mod:`~lcam.evaluation.report.sections`: the page's sections;
- :mod:`~lcam.evaluation.report.wandb`: :func:`log_to_wandb`.

Every file is written atomically (:mod:`lcam._io`): a reader sees the old file or the new one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

from lcam._io import atomic_write_text
from lcam.evaluation.report import sections
from lcam.evaluation.report.html import note, page, png_data_uri
from lcam.evaluation.report.tables import Rows, column_order, markdown_table, write_csv
from lcam.evaluation.report.wandb import log_to_wandb

__all__ = ["column_order", "log_to_wandb", "png_data_uri", "write_report", "write_tables"]

_TRAINED_HEADING = "Images of trained classes only"
_TRAINED_CSV = "comparison_trained_classes.csv"
# What a report writes after its tables; an earlier run's copy must not outlive them.
_WRITTEN_AFTER_TABLES = ("report.html", "sanity.csv", "unit_alignment.csv", _TRAINED_CSV)
_TRAINED_NOTE = (
    "The same methods, scored only on the images that every learned head explained for a class "
    "it had training images of (a head's map of an untrained class is its initialisation, or "
    "the map all classes share, not an explanation of that class). Passes and milliseconds are "
    "over all images."
)


def write_tables(
    rows: Rows,
    run_dir: str | Path,
    *,
    trained_rows: Rows | None = None,
    notes: Sequence[str] = (),
    title: str = "lcam method comparison",
) -> dict[str, Path]:
    """Write the comparison's tables, ``comparison.csv`` and ``comparison.md`` (and
    ``comparison_trained_classes.csv``), before anything else of a report.

    A test run writes these first, so that a failure in a later, slower or riskier step (the
    sanity check, the page with its gallery) leaves the measured table on disk. The files of
    an earlier run in ``run_dir`` that a report writes after the tables (``report.html``,
    ``sanity.csv``, ``unit_alignment.csv``, ``comparison_trained_classes.csv``) are removed, so
    that the folder never pairs this run's table with another run's page or check.

    Args: as :func:`write_report`.

    Returns:
        ``{"csv", "markdown"}`` paths, plus ``"trained_csv"`` when ``trained_rows`` are given.
    """
    directory = Path(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in _WRITTEN_AFTER_TABLES:
        (directory / stale).unlink(missing_ok=True)
    rows = [dict(row) for row in rows]
    markdown = f"# {title}\n\n" + markdown_table(rows)
    markdown += "".join(f"\nNote: {line}\n" for line in notes)
    paths = {"csv": write_csv(directory / "comparison.csv", rows)}
    if trained_rows:
        paths["trained_csv"] = write_csv(directory / _TRAINED_CSV, trained_rows)
        markdown += f"\n## {_TRAINED_HEADING}\n\n{_TRAINED_NOTE}\n\n" + markdown_table(trained_rows)
    paths["markdown"] = atomic_write_text(directory / "comparison.md", markdown)
    return paths


def write_report(
    rows: Rows,
    run_dir: str | Path,
    *,
    trained_rows: Rows | None = None,
    curves: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    gallery: Sequence[Mapping[str, Any]] | None = None,
    misclassified: Sequence[Mapping[str, Any]] | None = None,
    unit_alignment: Rows | None = None,
    sanity: Rows | None = None,
    notes: Sequence[str] = (),
    title: str = "lcam method comparison",
) -> dict[str, Path]:
    """Write ``comparison.csv``, ``comparison.md`` and a self-contained ``report.html``.

    The page shows a headline table first (method, passes and milliseconds per image, AD/IC,
    in-mask energy, pointing game, deletion/insertion AUC) and every column of
    ``comparison.csv`` in a folded section below it. The tables are written first
    (:func:`write_tables`).

    Args:
        rows: one dict per method (``MethodComparison.compute()``).
        run_dir: output folder (created if missing).
        trained_rows: the same methods scored only on the images every method explained for a
            class it was trained on (``MethodComparison.results()["trained_rows"]``); written to
            ``comparison_trained_classes.csv``, to a second Markdown table and to a page section.
            Without them a ``comparison_trained_classes.csv`` of an earlier run in ``run_dir`` is
            removed, so that the folder never pairs this run's table with another run's subset.
        curves: ``{method: {"fractions", "deletion", "insertion"}}`` mean curves.
        gallery: examples ``{"image", "overlays": {method: image}, "prediction", "label", ...}``
            (images ``(H, W, 3)`` uint8 or float in [0, 1]).
        misclassified: examples whose ``overlays`` are ``{method: {"predicted", "true"}}``.
        unit_alignment: rows of :func:`lcam.evaluation.dissection.unit_alignment`
            (``channel``, ``class``, ``class_name``, ``iou``); also written to
            ``unit_alignment.csv``.
        sanity: rows of :func:`lcam.evaluation.sanity.model_randomisation` (``mode``, ``step``,
            ``layer``, ``method``, ``spearman``, ...); also written to ``sanity.csv``.
        notes: sentences printed under the metrics table, in the Markdown and on the page
            (``MethodComparison.results()["notes"]``: which maps a learned head's row scores).
        title: page title.

    Returns:
        ``{"csv", "markdown", "html"}`` paths, plus ``"trained_csv"``, ``"sanity_csv"`` /
        ``"unit_alignment_csv"`` when those rows are given.
    """
    directory = Path(run_dir)
    rows = [dict(row) for row in rows]
    paths = write_tables(rows, directory, trained_rows=trained_rows, notes=notes, title=title)
    if sanity:
        paths["sanity_csv"] = write_csv(directory / "sanity.csv", sanity)
    if unit_alignment:
        paths["unit_alignment_csv"] = write_csv(directory / "unit_alignment.csv", unit_alignment)

    images = max((int(row.get("images", 0) or 0) for row in rows), default=0)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        f"<h1>{escape(title)}</h1>",
        note(
            f"{len(rows)} methods on {images} images; generated {stamp}. ↓ lower is better, "
            "↑ higher is better; the best value of each column is bold. AD/IC in percent (the "
            "L-CAM/TAME protocol), ROAD as the share of surviving top-1 classes, passes per "
            "image; energy_pointing_game is the share of the map's energy inside the object."
        ),
        "<h2>Metrics</h2>",
        sections.metrics_section(rows),
        *(note(escape(line)) for line in notes),
    ]
    if trained_rows:
        parts += [
            f"<h2>{_TRAINED_HEADING}</h2>",
            note(_TRAINED_NOTE),
            sections.metrics_section(trained_rows, "metrics-trained-classes"),
        ]
    parts += [
        "<h2>Deletion and insertion curves</h2>",
        sections.curves_section(curves or {}),
        "<h2>Gallery</h2>",
        sections.gallery_section(gallery or []),
        "<h2>Misclassified images</h2>",
        sections.misclassified_section(misclassified or []),
    ]
    if unit_alignment is not None:
        parts += ["<h2>Unit alignment</h2>", sections.unit_alignment_section(unit_alignment)]
    if sanity is not None:
        parts += ["<h2>Sanity check: model randomisation</h2>", sections.sanity_section(sanity)]
    paths["html"] = atomic_write_text(directory / "report.html", page(title, parts))
    return {key: paths[key] for key in ("csv", "markdown", "html", *sorted(paths))}
