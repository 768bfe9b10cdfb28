"""Lightning's progress in logs: :class:`LogProgressBar`, one line per N % of each stage.

Lightning's own bars (Rich, tqdm) redraw themselves with carriage returns, which a log file or a
scheduler's output keeps as one endless line. ``train.py`` uses this bar instead when stderr is
not a terminal (see :class:`lcam.cli.LCAMCLI`); ``trainer.enable_progress_bar: false`` silences
both. The lines come from :func:`lcam._io.progress`, as those of ``infer.py`` and the benchmarks.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import pytorch_lightning as pl
from pytorch_lightning.callbacks.progress.progress_bar import ProgressBar
from tqdm.auto import tqdm

from lcam._io import progress

__all__ = ["LogProgressBar"]


class LogProgressBar(ProgressBar):
    """One line per ``every`` of the batches of each training epoch, validation, test (the
    method comparison of ``train.py test``) and predict stage, with the time left; rank 0 only.

    Args:
        every: fraction of a stage's batches between two lines (0.1: every 10 %).
        stream: where the lines go (default ``sys.stderr``; not a terminal, or it draws a bar).
    """

    def __init__(self, every: float = 0.1, stream: TextIO | None = None) -> None:
        super().__init__()
        self.every, self.stream = every, stream
        self._enabled = True
        self._bars: dict[str, tqdm] = {}

    def disable(self) -> None:
        """Show nothing (Lightning calls it on the ranks other than 0)."""
        self._enabled = False

    def enable(self) -> None:
        """Show the lines again."""
        self._enabled = True

    def _start(self, stage: str, total: float, description: str) -> None:
        self._close(stage)
        if self._enabled and self.trainer.is_global_zero and 0 < total < float("inf"):
            stream = self.stream if self.stream is not None else sys.stderr
            self._bars[stage] = progress(
                int(total), description, "batch", every=self.every, stream=stream
            )

    def _advance(self, stage: str) -> None:
        if stage in self._bars:
            self._bars[stage].update(1)

    def _close(self, stage: str) -> None:
        bar = self._bars.pop(stage, None)
        if bar is not None:
            bar.close()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("train", self.total_train_batches, f"epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._advance("train")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close("train")

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._start("validation", self.total_val_batches, "validation")

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._advance("validation")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close("validation")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("test", sum(trainer.num_test_batches), "test")

    def on_test_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._advance("test")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close("test")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start("predict", sum(trainer.num_predict_batches), "predict")

    def on_predict_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._advance("predict")

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close("predict")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """A stopped run closes its lines where it stopped."""
        for stage in list(self._bars):
            self._close(stage)
