"""Training loaders whose order depends only on (seed, epoch) and that resume mid-epoch.

A plain ``DataLoader(shuffle=True)`` draws its order from the global random state and cannot say
how far it got, so a run resumed from a mid-epoch checkpoint replays or skips batches, and a DDP
run sees other batches than a single-process one. :class:`SeededSampler` fixes the order
(a :class:`~torch.utils.data.DistributedSampler`, so Lightning keeps it under DDP and calls its
``set_epoch``) and :class:`ResumableLoader` saves and restores its position in Lightning
checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["ResumableLoader", "SeededSampler"]


class SeededSampler(DistributedSampler):
    """Shuffled (or not) indices from ``(seed, epoch)`` alone, sharded over ``num_replicas``.

    ``skip`` indices are dropped from the next iteration only (set when resuming).
    """

    def __init__(
        self, dataset: Dataset, *, shuffle: bool, seed: int, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])


class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`SeededSampler` with ``state_dict``/``load_state_dict``.

    The saved position counts the batches handed to the training loop: Lightning saves
    mid-epoch checkpoints at the end of a training step, after that step's batch was fetched and
    before the next one is. An exhausted iterator means the epoch is complete.
    """

    sampler: SeededSampler

    def __init__(self, dataset: Dataset, sampler: SeededSampler, **options: Any) -> None:
        super().__init__(dataset, sampler=sampler, **options)
        self._requested = 0
        self._exhausted = False

    def __iter__(self) -> Iterator[Any]:
        self._requested, self._exhausted = self.sampler.skip // (self.batch_size or 1), False
        for batch in super().__iter__():
            self._requested += 1
            yield batch
        self._exhausted = True

    def state_dict(self) -> dict[str, int | bool]:
        """``{"epoch", "batches", "complete"}``: where the training loop stands."""
        return {
            "epoch": self.sampler.epoch,
            "batches": self._requested,
            "complete": self._exhausted,
        }

    def load_state_dict(self, state: dict[str, int | bool]) -> None:
        """Continue after the saved batch of the saved epoch (nothing to skip if it was done)."""
        self.sampler.set_epoch(int(state["epoch"]))
        if not state["complete"]:
            self.sampler.skip = int(state["batches"]) * (self.batch_size or 1)
