"""Stopping a run cleanly on SIGTERM (schedulers, ``timeout``, ``kill``) and SIGINT (Ctrl-C).

- :class:`StopSignals`: while active, the first SIGINT or SIGTERM is *recorded* instead of
  killing the process; the run checks it between batches and stops there. A second Ctrl-C stops
  at once (``KeyboardInterrupt``). The exit code of a stopped run is ``128 + signal``: 143 for
  SIGTERM, 130 for SIGINT, as a shell reports a process the signal killed.
- :class:`InterruptionCheckpoint`: the Lightning side. Either signal makes the trainer stop the
  way Lightning stops on SIGTERM (after the training step in flight; under DDP every rank after
  the same step, whichever ranks got the signal, decided by one all-reduce per step);
  a stopped ``fit`` then saves ``interrupted.ckpt`` (mid-epoch, with the loader position, see
  :mod:`lcam.data.loaders`) beside the other checkpoints, written by rank 0 only.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lcam._io import atomic_write

__all__ = ["INTERRUPTED", "InterruptionCheckpoint", "StopSignals", "exit_code"]

INTERRUPTED = "interrupted.ckpt"
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The exit code of a run stopped by ``signum``: ``128 + signum`` (SIGTERM 143, SIGINT 130)."""
    return 128 + int(signum)


class StopSignals:
    """Record SIGINT / SIGTERM while active (a context manager) instead of dying at once.

    Handlers can only be installed from the main thread; elsewhere the context does nothing and
    signals keep their previous behaviour. Handlers installed later (Lightning's SIGTERM handler)
    call this one too.

    Attributes:
        received: the first signal received (``None``: none yet).
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._listeners: list[Callable[[int], None]] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @property
    def stop(self) -> bool:
        """Whether a stop was requested."""
        return self.received is not None

    @property
    def exit_code(self) -> int:
        """:func:`exit_code` of the received signal (0 if none)."""
        return exit_code(self.received) if self.received is not None else 0

    @property
    def name(self) -> str:
        """``"SIGTERM"`` / ``"SIGINT"`` (empty if none)."""
        return signal.Signals(self.received).name if self.received is not None else ""

    def reinstall(self) -> None:
        """Put this object's handlers back in place of any installed since it was entered (the
        handlers it restores on exit stay those from before it)."""
        if self._previous and threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                signal.signal(signum, self._handle)

    def listen(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(signum)`` on every recorded signal (from the signal handler)."""
        self._listeners.append(listener)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        if self.received is None:
            self.received = signum
            print(
                f"\nreceived {signal.Signals(signum).name}: stopping after the batch in flight "
                "(Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )
        for listener in self._listeners:
            listener(signum)


def _request_lightning_stop(trainer: pl.Trainer) -> None:
    """Make ``trainer`` stop as on SIGTERM: Lightning checks this flag after every training or
    evaluation batch and, under DDP, broadcasts rank 0's to every rank before each step."""
    # No public setter: this is the flag the read-only ``trainer.received_sigterm`` returns.
    trainer._signal_connector.received_sigterm = True


class InterruptionCheckpoint(Callback):
    """Stop the trainer on a signal :class:`StopSignals` records; save a resumable checkpoint.

    Args:
        signals: the active :class:`StopSignals` of the process.

    Attributes:
        checkpoint: where the interrupted ``fit`` was saved (``None``: not saved).
    """

    def __init__(self, signals: StopSignals) -> None:
        super().__init__()
        self.signals = signals
        self.checkpoint: Path | None = None
        self.error: OSError | None = None
        self.folder: Path | None = None
        self.rank = 0  # this process's global rank (DDP): only rank 0 reports the stop
        self._trainer: pl.Trainer | None = None
        signals.listen(self._on_signal)

    def _on_signal(self, signum: int) -> None:
        # Under DDP the ranks decide together after each step (see ``on_train_batch_end``).
        if self._trainer is not None and self._trainer.world_size == 1:
            _request_lightning_stop(self._trainer)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer, self.rank = trainer, trainer.global_rank
        self.folder = self.directory(trainer)

    def _reapply(self, trainer: pl.Trainer) -> None:
        # Lightning clears its flag as a stage starts: a signal received during setup counts.
        if self.signals.stop and trainer.world_size == 1:
            _request_lightning_stop(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            # Lightning's own SIGTERM handler broadcasts between the ranks from inside the
            # handler: a rank signalled twice (by the scheduler, then by rank 0's launcher)
            # broadcasts twice, the others once, and the run hangs. Ours only records.
            self.signals.reinstall()
        self._reapply(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        """Under DDP: after every step, all ranks stop if any received a signal (one collective),
        so that they all stop after the same step and save one checkpoint together."""
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(
            self.signals.stop, all=False
        ):
            _request_lightning_stop(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reapply(trainer)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reapply(trainer)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reapply(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = None

    def directory(self, trainer: pl.Trainer) -> Path:
        """The folder of the run's checkpoints (``<default_root_dir>/checkpoints`` if none)."""
        callback = trainer.checkpoint_callback
        dirpath = getattr(callback, "dirpath", None)
        return Path(dirpath) if dirpath else Path(trainer.default_root_dir) / "checkpoints"

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """A ``fit`` stopped by a signal: every rank calls the save, rank 0 writes the file."""
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        path = self.directory(trainer) / INTERRUPTED
        try:
            if trainer.is_global_zero:  # whole or absent, even if killed while writing
                atomic_write(path, lambda temporary: trainer.save_checkpoint(temporary))
            else:
                trainer.save_checkpoint(path)  # takes part in the save's barrier only
        except OSError as error:  # reported by train.py with the folder; the run still stops
            self.error = error
            return
        self.checkpoint = path
