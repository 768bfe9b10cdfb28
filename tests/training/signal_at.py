"""A callback that signals its own process as a chosen training step starts.

A signal sent from outside lands at a moment the machine's load decides (a test waiting for "step
2" may see the run already finished); sent by the process itself as step ``step`` starts, it lands
mid-step every time, and the run must finish that step, then stop.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class SignalAt(Callback):
    """Send ``signum`` to this process when the training step of global step ``step`` starts,
    or (``train.py test``) test batch ``step``.

    Args:
        step: the global step (optimizer steps done so far), or the test batch index, at whose
            start the signal is sent.
        signum: the signal (default SIGTERM, what schedulers send).
    """

    def __init__(self, step: int, signum: int = int(signal.SIGTERM)) -> None:
        super().__init__()
        self.step, self.signum = step, signum

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)

    def on_test_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == self.step:
            os.kill(os.getpid(), self.signum)
