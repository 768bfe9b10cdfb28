"""Batch inference in several processes: Lightning predict with a distributed writer.

``infer.py --devices N`` (or ``--num-nodes M``) runs here. Every process (rank) builds the same
list of pending images: the inputs minus those already complete, as decided by
:meth:`lcam.inference.writer.OutputWriter.completed`, read before any process writes.
Lightning's predict stage splits that list with an unrepeated distributed sampler, so each image
goes to exactly one rank; :class:`ExplainModule` explains a batch with the same step as one
process (:func:`lcam.inference.step.explain_batch`), and :class:`DistributedWriter` writes its
maps and overlays atomically and journals its records in ``predictions.rank<R>.jsonl``
(failures in ``errors.rank<R>.jsonl``) through the same
:class:`~lcam.inference.writer.OutputWriter` as the single-process loop. When every rank is
done, rank 0 merges the journals into ``predictions.jsonl`` (in input order) and
``errors.jsonl`` and removes them; a run interrupted before that leaves the journals, which the
next run (with any number of processes) reads as complete work.

With ``num_nodes > 1`` the output folder must be on a file system all machines share.

As in one process (``infer.py`` without ``--devices``):

- The folder lock: global rank 0 (under Lightning's launcher, the process that parses the command
  line and starts the others) holds ``<output>/.infer.lock`` (:class:`~lcam.inference.lock.
  FolderLock`) for the whole run, from before it reads which images are done until the journals
  are merged; it starts the other processes only once it holds it, so a second run on the folder
  is refused (``infer.py`` exit 3) naming it, before its launcher starts any other process. A
  lock left by a killed run is taken over. The other ranks neither take nor check the lock (with
  torchrun they start beside rank 0; a refused rank 0 exits 3 and torchrun should end the rest:
  not tried).
- Signals: SIGTERM or SIGINT reaching any rank (``kill`` to the launcher only, or Ctrl-C to all)
  stops every rank after its batch in flight: the rank that records it raises a flag file every
  rank checks before it fetches its next batch (:mod:`lcam.inference.stop`, which says why not a
  vote per batch). The ranks then merge their journals as at the end of a full run; rank 0
  reports how far the run got and exits 143 / 130; the same command (with any number of
  processes) finishes the job. Not covered: a SIGTERM in the short window between Lightning
  installing its own SIGTERM handler and the predict loop starting (one barrier) also goes
  through Lightning's handler, which forwards it to the processes it started and broadcasts
  from inside the handler; ours records it all the same.

- Write errors (full disk, read-only folder, no permission) end the run as in one process: one
  line naming the folder, the error and the images that process finished (one line per process
  that met the error), exit 3, outputs kept whole; the same command finishes the job.

What still differs: the progress is Lightning's bar (``--no-progress`` hides it), not the
per-10 % lines of one process.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from lcam._io import WRITE_ERRORS, read_jsonl
from lcam.explainers.base import Explainer
from lcam.explanation import Explanation
from lcam.inference.files import ImageFile
from lcam.inference.lock import FolderLock
from lcam.inference.step import InferenceOptions, explain_batch, make_loader
from lcam.inference.stop import SharedStop
from lcam.inference.writer import OutputWriteError, OutputWriter
from lcam.training.interruption import StopSignals

__all__ = ["DistributedWriter", "ExplainModule", "LaunchError", "run_distributed_inference"]


class LaunchError(ValueError):
    """The run cannot start its processes as requested (a usage error, exit code 2)."""


class ExplainModule(pl.LightningModule):
    """Wraps an explainer for ``Trainer.predict``: ``predict_step`` returns its explanation.

    Args:
        explainer: any :class:`~lcam.explainers.base.Explainer`; Lightning moves it to the
            rank's device.
        options: the job's options (target, precision, memory format), as in one process.
        stop: asked before every batch is fetched; once it says stop, the rank's loop ends
            there (its batch in flight was written), without waiting for the other ranks.
    """

    def __init__(
        self, explainer: Explainer, options: InferenceOptions, stop: SharedStop | None = None
    ) -> None:
        super().__init__()
        self.explainer, self.options, self.stop = explainer, options, stop

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        """Leave the batch where it is: ``explain`` moves the images, and the originals stay on
        the CPU, where their outputs are written."""
        return batch

    def predict_step(self, dataloader_iter: Iterator[Any]) -> Explanation | None:
        """The explanation of the next batch's readable images (``None`` if there are none).

        Takes the loader's iterator (Lightning then fetches no batch ahead), so that a stop
        ends the loop before the next batch is even decoded: ``StopIteration`` is how Lightning
        lets a step end its loop, which then ends as if the rank's share were done.
        """
        if self.stop is not None and self.stop.requested():
            raise StopIteration
        batch, _, _ = next(dataloader_iter)
        return explain_batch(self.explainer, batch, self.options)


class DistributedWriter(BasePredictionWriter):
    """Writes every predicted batch through an :class:`~lcam.inference.writer.OutputWriter`;
    merges the journals at the end.

    - ``setup``: checks that all ranks found the same pending images; rank 0 folds the journals
      of an interrupted run into ``predictions.jsonl`` and lowers a stop flag a killed run left;
      then each rank opens its own journals (and raises the flag if signalled meanwhile).
    - predict start: the stop's signal handlers go back over Lightning's.
    - each batch: maps, overlays and records, as in one process.
    - ``teardown`` (every rank, also one that got no batch or stopped early): rank 0 merges the
      journals, lowers the stop flag, and all ranks receive the counts in :attr:`summary`.

    Args:
        writer: the output writer (one per rank).
        files: all inputs, in order.
        pending: the inputs still to explain; the predict dataset is built on them.
        complete: records of the inputs already complete, by name.
        stop: the run's :class:`~lcam.inference.stop.SharedStop` (``None``: never stopped).
    """

    def __init__(
        self,
        writer: OutputWriter,
        files: Sequence[ImageFile],
        pending: Sequence[ImageFile],
        complete: dict[str, dict[str, Any]],
        stop: SharedStop | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        self.writer, self.files, self.pending, self.complete = writer, files, pending, complete
        self.stop = stop
        self.summary: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        strategy = trainer.strategy
        digest = hashlib.sha256("\n".join(item.name for item in self.pending).encode()).hexdigest()
        differs = digest != strategy.broadcast(digest, src=0)
        if strategy.reduce_boolean_decision(differs, all=False):
            raise RuntimeError(
                "the processes found different images to explain (did the inputs or the output "
                "folder change while they started?); run again"
            )
        if trainer.is_global_zero:
            self.writer.consolidate(self.files, self.complete)
            if self.stop is not None:
                self.stop.clear()
        strategy.barrier("lcam-journals")  # no rank opens a journal that rank 0 then removes
        if self.stop is not None:
            self.stop.announce()  # a signal received while rank 0 lowered a leftover flag
        rank = trainer.global_rank
        self.writer.open(
            self.writer.rank_journal("predictions", rank),
            self.writer.rank_journal("errors", rank),
            mode="w",
            claims=self.writer.rank_journal(".claims", rank),
        )

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stop is not None:
            self.stop.reinstall()

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        self.writer.write_batch(batch, prediction, self.pending)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.writer.close()
        strategy = trainer.strategy
        strategy.barrier("lcam-merge")  # every rank's journal is complete and closed
        # The one stop collective: every rank comes here once, however many batches it ran.
        signum = 0 if self.stop is None else self.stop.signum
        stopped = int(strategy.reduce(torch.tensor(signum), reduce_op="max").item())
        summary = None
        if trainer.is_global_zero:
            records: dict[str, dict[str, Any]] = {}
            errors: list[dict[str, str]] = []
            written: Counter[str] = Counter()
            per_rank = []
            for rank in range(trainer.world_size):
                lines = read_jsonl(self.writer.rank_journal("predictions", rank))
                per_rank.append(len(lines))
                written.update(record["name"] for record in lines)
                records.update((record["name"], record) for record in lines)
                errors += read_jsonl(self.writer.rank_journal("errors", rank))
            repeated = sorted(name for name, count in written.items() if count > 1)
            if repeated:
                warnings.warn(
                    f"{len(repeated)} images were explained more than once (e.g. {repeated[0]!r})",
                    RuntimeWarning,
                    stacklevel=1,
                )
            errors = [*self.writer.refused, *errors]
            self.writer.consolidate(self.files, {**self.complete, **records}, errors)
            if self.stop is not None:
                self.stop.clear()  # every rank has passed its last check (the barrier above)
            summary = {
                "done": sum(per_rank),
                "skipped": len(self.complete),
                "failed": len(errors),
                "per_rank": per_rank,
                "stopped": stopped,
            }
        self.summary = strategy.broadcast(summary, src=0)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.writer.close()  # what was journaled stays; the next run skips it


def run_distributed_inference(
    explainer: Explainer,
    files: Sequence[ImageFile],
    output: str | Path,
    *,
    devices: int = 2,
    num_nodes: int = 1,
    accelerator: str = "auto",
    strategy: str = "auto",
    relaunchable: bool = True,
    signals: StopSignals | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Explain ``files`` with Lightning predict in several processes; same files as one process.

    Takes the options of :func:`lcam.inference.local.run_inference` as keywords (fields of
    :class:`~lcam.inference.step.InferenceOptions`; ``batch_size`` and ``num_workers`` per
    process) and Lightning's ``devices``, ``num_nodes``, ``accelerator`` and ``strategy``. Every
    process must call it with the same arguments: under the default launcher, Lightning starts
    the other ranks by re-running this process's command line.

    Args:
        relaunchable: whether re-running ``sys.argv`` repeats this call; if not, and Lightning
            would have to start the processes itself, :class:`LaunchError` is raised.
        signals: this process's active :class:`~lcam.training.interruption.StopSignals`; a
            signal any rank records stops every rank after its batch in flight (see
            :mod:`lcam.inference.stop`). ``None``: the run is not stopped by signals.

    Returns:
        Counts (the same in every process): ``{"done", "skipped", "failed"}``, ``"per_rank"``
        (images explained by each rank), ``"stopped"`` (the signal that stopped the run, 0 if
        none; a stopped run has fewer than ``len(files)`` in all) and this process's global
        ``"rank"``.

    Raises:
        LaunchError: the processes cannot be started from this call.
        FolderBusyError: (global rank 0) another live run holds ``output``; nothing was written
            and no other process was started.
        TypeError: an unknown option.
    """
    settings = InferenceOptions(**options)
    output = Path(output)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=settings.progress,
        inference_mode=False,
    )
    launcher = trainer.strategy.launcher
    if (
        isinstance(launcher, _SubprocessScriptLauncher)
        and not launcher.cluster_environment.creates_processes_externally
        and not relaunchable
    ):
        raise LaunchError(
            "Lightning starts the other processes by re-running this command line, which is not "
            "this call: run infer.py as a script, or start the processes yourself (torchrun)"
        )
    # Global rank 0 holds the folder for the whole run; under Lightning's launcher it is the
    # process that starts the others, so they start only once it holds the folder. The other
    # ranks neither take nor check the lock (it is rank 0's: they would find it busy).
    complete: dict[str, Any] = {}
    writer: OutputWriter | None = None
    try:
        with FolderLock(output) if trainer.is_global_zero else nullcontext() as lock:
            if lock is not None:
                lock.report_takeover()
            writer = OutputWriter.for_explainer(
                explainer, output, settings.target, settings.colormap
            )
            complete, pending = writer.split_done(files, settings.overwrite)
            if not pending:  # nothing to distribute: no process is started
                output.mkdir(parents=True, exist_ok=True)
                writer.consolidate(files, complete, writer.refused)
                counts = {"done": 0, "skipped": len(complete), "failed": len(writer.refused)}
                return {**counts, "per_rank": [], "stopped": 0, "rank": 0}
            stop = SharedStop(output, signals)
            callback = DistributedWriter(writer, files, pending, complete, stop)
            trainer.callbacks.append(callback)
            output.mkdir(parents=True, exist_ok=True)
            cuda = trainer.strategy.root_device.type == "cuda"
            loader = make_loader(pending, explainer, settings, cuda)
            with warnings.catch_warnings():
                # --num-workers is the user's choice; a batch of unreadable files predicts None.
                warnings.filterwarnings("ignore", ".*does not have many workers.*")
                warnings.filterwarnings("ignore", ".*predict returned None.*")
                # predict_step takes the iterator to fetch its own batch once per step (see there);
                # Lightning calls that signature experimental (tested here with Lightning 2.6).
                warnings.filterwarnings("ignore", ".*`dataloader_iter`.*")
                trainer.predict(
                    ExplainModule(explainer, settings, stop),
                    dataloaders=loader,
                    return_predictions=False,
                )
    except OSError as error:  # the folder cannot take the lock, a journal or an output
        if error.errno not in WRITE_ERRORS:
            raise
        done = len(complete) + (len(writer.records) if writer is not None else 0)  # this rank
        raise OutputWriteError(output, error, done, len(files)) from error
    if callback.summary is None:
        raise RuntimeError("the prediction ended without merging its journals")
    return {**callback.summary, "rank": trainer.global_rank}
