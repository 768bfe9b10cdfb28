"""The training command line: LightningCLI over :class:`LCAMModule` and any LightningDataModule.

Exit codes: 0 done; 143 / 130 stopped by SIGTERM / SIGINT (a ``fit`` saves ``interrupted.ckpt``
first and prints the command that resumes it, see :mod:`lcam.training.interruption`); 1 a
checkpoint or output could not be written (one line naming the folder and the error); 2 usage.
"""

from __future__ import annotations

import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import LightningDataModule, Trainer
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar
from pytorch_lightning.cli import ArgsType, LightningCLI
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lcam._io import WRITE_ERRORS
from lcam.training import LCAMModule
from lcam.training.interruption import InterruptionCheckpoint, StopSignals, exit_code
from lcam.training.progress import LogProgressBar

__all__ = ["LCAMCLI", "main", "resume_command"]

# Lightning's own bars (Rich when installed, else tqdm), redrawn in place: fine on a terminal only.
DEFAULT_BARS = (RichProgressBar, TQDMProgressBar)


class LCAMCLI(LightningCLI):
    """LightningCLI whose model is defined by the config, never silently by a checkpoint.

    Plain LightningCLI overwrites the model's config with the hyperparameters saved in a
    ``--ckpt_path`` checkpoint. Here the config stays in charge: the checkpoint is only checked to
    be lcam data, and :meth:`LCAMModule.on_load_checkpoint` refuses one made for another
    configuration (backbone, classes, target layer, input size, head), naming what differs,
    before any weight is loaded.

    Args:
        interruption: added to the trainer's callbacks: it stops the run on a recorded signal and
            saves a resumable checkpoint of an interrupted ``fit``.
        *args, **kwargs: those of :class:`~pytorch_lightning.cli.LightningCLI`.
    """

    def __init__(
        self, *args: Any, interruption: InterruptionCheckpoint | None = None, **kwargs: Any
    ) -> None:
        self.interruption = interruption
        super().__init__(*args, **kwargs)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The configured trainer, plus the interruption callback if one was given; when stderr
        is not a terminal, Lightning's default bar (Rich or tqdm) is replaced by
        :class:`~lcam.training.progress.LogProgressBar` (``trainer.enable_progress_bar: false``
        still shows nothing)."""
        trainer = super().instantiate_trainer(**kwargs)
        if self.interruption is not None:
            trainer.callbacks.append(self.interruption)
        if not sys.stderr.isatty():  # a log: lines per 10 %, not a bar redrawn with "\r"
            trainer.callbacks[:] = [
                LogProgressBar() if type(callback) in DEFAULT_BARS else callback
                for callback in trainer.callbacks
            ]
        return trainer

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        try:
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as error:  # refused unpickling or not a torch file: say which and why
            self.parser.error(
                f"--ckpt_path {ckpt_path} is not a loadable checkpoint (read as data with "
                f"weights_only=True): {str(error).splitlines()[0]}"
            )
        if not isinstance(checkpoint, dict) or "lcam" not in checkpoint:
            self.parser.error(f"--ckpt_path {ckpt_path} is not an lcam training checkpoint")


def resume_command(args: Sequence[str], checkpoint: Path) -> str:
    """The ``train.py`` command of ``args`` (any ``--ckpt_path`` replaced) resuming from
    ``checkpoint``, quoted for a POSIX shell."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    return shlex.join(["python", "train.py", *kept, "--ckpt_path", str(checkpoint)])


def _stopped(
    signals: StopSignals, interruption: InterruptionCheckpoint, args: Sequence[str]
) -> SystemExit:
    """Report a run a signal stopped; the exit to raise (143 SIGTERM, 130 SIGINT)."""
    name = signals.name or "SIGTERM"  # Lightning's own handler got it (no StopSignals active)
    code = signals.exit_code or exit_code(signal.SIGTERM)
    if interruption.rank != 0:  # DDP: rank 0 reports for every rank
        return SystemExit(code)
    if interruption.checkpoint is not None:
        print(
            f"train.py: stopped by {name}; saved {interruption.checkpoint}. Resume with:\n"
            f"  {resume_command(args, interruption.checkpoint)}",
            file=sys.stderr,
        )
    elif interruption.error is not None:
        print(
            f"train.py: stopped by {name}; could not save the checkpoint in "
            f"{interruption.folder}: {interruption.error}",
            file=sys.stderr,
        )
    else:
        print(f"train.py: stopped by {name}", file=sys.stderr)
    return SystemExit(code)


def main(args: ArgsType = None) -> LightningCLI:
    """``fit`` / ``validate`` / ``test`` / ``predict`` driven by YAML configs and CLI overrides.

    Raises:
        SystemExit: 143 / 130 when SIGTERM / SIGINT stopped the run, 1 when a checkpoint or
            other output could not be written.
    """
    given = list(args) if isinstance(args, Sequence) and not isinstance(args, str) else None
    command = given if given is not None else sys.argv[1:]
    with StopSignals() as signals:
        interruption = InterruptionCheckpoint(signals)
        try:
            return LCAMCLI(
                LCAMModule,
                LightningDataModule,
                subclass_mode_data=True,
                save_config_kwargs={"overwrite": True},
                args=args,
                interruption=interruption,
            )
        except SIGTERMException:
            raise _stopped(signals, interruption, command) from None
        except KeyboardInterrupt:  # a second Ctrl-C outside Lightning's loops
            raise SystemExit(exit_code(signal.SIGINT)) from None
        except SystemExit as exit:
            if signals.stop:  # Lightning exits 1 on a KeyboardInterrupt it caught
                raise _stopped(signals, interruption, command) from None
            raise exit
        except OSError as error:
            if error.errno not in WRITE_ERRORS:
                raise
            where = interruption.folder or "the output folder"
            print(
                f"train.py: error: cannot write in {where}: {error.strerror or error}; the run "
                "stopped (free space or fix the folder, then run the same command again)",
                file=sys.stderr,
            )
            raise SystemExit(1) from None
