"""The comparison rows as a Weights & Biases table."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from lcam.evaluation.report.tables import Rows, column_order

__all__ = ["log_to_wandb"]


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
