"""Test-time evaluation of a trained head: the method comparison, sanity check and report.

A ``test`` run of :class:`~lcam.training.module.LCAMModule` that names ``methods`` compares the
head with those explainers on the test set (:class:`~lcam.evaluation.MethodComparison`), keeps a
few images for the model-randomisation sanity check, measures the network-dissection unit
alignment on data with masks, and writes ``comparison.csv``/``.md`` and ``report.html``. The
module forwards its test hooks here; nothing of this enters a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import Trainer
from torch import Tensor

from lcam.backbone import FrozenBackbone
from lcam.evaluation import (
    MethodComparison,
    UnitAlignment,
    alignment_rows,
    check_comparison_options,
    log_to_wandb,
    model_randomisation,
    write_report,
    write_tables,
)
from lcam.explainers import Explainer, LearnedExplainer, get_explainer

__all__ = ["EVALUATION_ARGUMENTS", "TestTimeEvaluation"]

# The LCAMModule arguments that configure this (kept out of checkpoints: a test run takes them
# from its config, which LightningCLI would otherwise let a checkpoint's values override).
EVALUATION_ARGUMENTS = (
    "methods",
    "method_options",
    "comparison",
    "sanity_images",
    "sanity_methods",
    "unit_alignment",
    "report_dir",
)


class TestTimeEvaluation:
    """The comparison of a trained head with other explainers during ``test`` runs.

    Args: the :class:`~lcam.training.module.LCAMModule` arguments of the same names (see there),
    all required (the module's signature holds the defaults).
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(
        self,
        *,
        methods: list[str] | None,
        method_options: dict[str, dict[str, Any]] | None,
        comparison: dict[str, Any] | None,
        sanity_images: int,
        sanity_methods: list[str] | None,
        unit_alignment: bool,
        report_dir: str | None,
    ) -> None:
        self.methods = list(methods or [])
        self.method_options = dict(method_options or {})
        self.comparison_options = dict(comparison or {})
        # A misspelled key fails when train.py builds the module, not after fit at test time.
        check_comparison_options(self.comparison_options)
        self.sanity_images = sanity_images
        self.sanity_methods = sanity_methods
        self.unit_alignment = unit_alignment
        self.report_dir = report_dir
        self.comparison: MethodComparison | None = None
        self.units: UnitAlignment | None = None
        self.sanity_batches: list[Tensor] = []

    def compared_methods(self, head: LearnedExplainer) -> dict[str, Explainer]:
        """``{name: explainer}`` of ``methods``; ``"lcam"`` is the trained ``head`` itself."""
        unknown = sorted(set(self.method_options) - set(self.methods))
        if unknown:
            raise ValueError(f"method_options for methods not in methods: {unknown}")
        return {
            name: head
            if name == "lcam"
            else get_explainer(name, head.backbone, **self.method_options.get(name, {}))
            for name in self.methods
        }

    def start(
        self, head: LearnedExplainer, device: torch.device, trained_on: frozenset[str] = frozenset()
    ) -> None:
        """Build the comparison (nothing when no ``methods`` are named); ``trained_on``: the
        columns the head's objective trains on, marked in the ``lcam`` row."""
        self.comparison, self.units, self.sanity_batches = None, None, []
        if not self.methods:
            return
        backbone = head.backbone
        methods = self.compared_methods(head)
        marks = {"lcam": trained_on} if "lcam" in methods else {}
        self.comparison = MethodComparison(
            backbone, methods, trained_on=marks, **self.comparison_options
        ).to(device)
        if self.unit_alignment:
            self.units = UnitAlignment(backbone.feature_channels, backbone.num_classes).to(device)

    def update(self, batch: dict[str, Tensor], backbone: FrozenBackbone) -> None:
        """Explain a test batch with every method and accumulate every metric."""
        if self.comparison is None:
            return
        images = batch["image"]
        self.comparison.update(images, batch.get("label"), batch.get("mask"), batch.get("boxes"))
        if self.units is not None and "mask" in batch:
            features = backbone.grid(backbone.body(images)[0])
            self.units.update(features, batch["mask"], batch["label"])
        kept = sum(len(chunk) for chunk in self.sanity_batches)
        if kept < self.sanity_images:
            self.sanity_batches.append(images[: self.sanity_images - kept].detach())

    def finish(
        self, head: LearnedExplainer, trainer: Trainer, log: Callable[[str, float], None]
    ) -> None:
        """Compute the comparison on every process (a collective), ``log`` every numeric cell as
        ``test/<method>/<column>`` (the trained-class rows as ``test_trained/<method>/<column>``),
        then, on the first process, write the tables (``report_dir``, default
        ``<default_root_dir>/comparison``), run the sanity check and write the report."""
        if self.comparison is None:
            return
        results = self.comparison.results()
        units = None
        if self.units is not None and self.units.update_called:
            units = alignment_rows(self.units.compute(), None, head.backbone.class_names)
        for prefix, rows in (("test", results["rows"]), ("test_trained", results["trained_rows"])):
            for row in rows:
                for column, value in row.items():
                    if isinstance(value, int | float) and column != "images":
                        log(f"{prefix}/{row['method']}/{column}", float(value))
        if not trainer.is_global_zero:
            return
        directory = Path(self.report_dir or Path(trainer.default_root_dir) / "comparison")
        # The table first: a failure in the sanity check or the page must not lose it.
        tables = write_tables(
            results["rows"], directory, trained_rows=results["trained_rows"], notes=results["notes"]
        )
        print(f"method comparison table written to {tables['markdown']}")
        sanity = None
        if self.sanity_batches:
            methods = self.compared_methods(head)
            chosen = self.sanity_methods or [
                name for name, method in methods.items() if method.forward_passes <= 1
            ]
            sanity = model_randomisation(
                head.backbone,
                {name: methods[name] for name in chosen},
                torch.cat(self.sanity_batches),
            )
        paths = write_report(run_dir=directory, unit_alignment=units, sanity=sanity, **results)
        log_to_wandb(trainer.loggers, results["rows"])
        print(f"method comparison written to {paths['html']}")
