"""Which validation images the per-epoch faithfulness scores: a fixed, class-stratified subset.

The first ``n`` images are no sample of a class-sorted set (``ImageFolder`` numbers images class
by class, so they are one class). Instead :func:`stratified_subset` draws ``n`` indices
round-robin over the classes (a seeded order within each class and of the classes), from the
labels :func:`dataset_labels` reads without decoding an image (``targets`` of torchvision
datasets, ``samples`` of image lists, through wrappers and ``Subset``). Datasets whose labels
cannot be read that way (the procedural ones draw each label while rendering) get a seeded
uniform draw over the indices.

Under DDP the validation sampler pads the set by repeating some images; :func:`own_indices`
keeps, on each process, only the images it is the first to see, so each subset image is scored
exactly once over all processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DistributedSampler

__all__ = ["SUBSET_SEED", "dataset_labels", "describe_subset", "own_indices", "stratified_subset"]

SUBSET_SEED = 0
"""Seed of the draw: the subset depends on the labels and ``n`` only, never on the run."""


def dataset_labels(dataset: Any) -> Tensor | None:
    """``(N,)`` integer labels of a map-style dataset, or None when they cannot be read cheaply.

    Reads ``targets`` (torchvision datasets), ``samples`` of ``(item, label)`` pairs (image lists),
    and goes through wrappers holding the real dataset as ``dataset`` (with ``indices`` for
    :class:`torch.utils.data.Subset`). Labels whose count differs from ``len(dataset)`` are
    refused (None): they belong to another set.
    """
    try:
        size = len(dataset)
    except TypeError:
        return None
    labels: Tensor | None = None
    targets = getattr(dataset, "targets", None)
    samples = getattr(dataset, "samples", None)
    inner = getattr(dataset, "dataset", None)
    if targets is not None:
        labels = torch.as_tensor(targets).long().flatten()
    elif isinstance(samples, Sequence) and all(
        isinstance(sample, tuple) and len(sample) == 2 for sample in samples
    ):
        labels = torch.as_tensor([int(label) for _, label in samples], dtype=torch.long)
    elif inner is not None and inner is not dataset:
        labels = dataset_labels(inner)
        indices = getattr(dataset, "indices", None)
        if labels is not None and indices is not None:
            labels = labels[torch.as_tensor(list(indices), dtype=torch.long)]
    return labels if labels is not None and len(labels) == size else None


def stratified_subset(
    labels: Tensor | None, size: int, count: int, seed: int = SUBSET_SEED
) -> Tensor:
    """Sorted ``(min(count, size),)`` dataset indices: round-robin over the classes of ``labels``
    (``(size,)``), or a seeded uniform draw when ``labels`` is None.

    Round-robin: every class gives its first image (in a seeded order), then every class with
    images left its second, and so on, the classes taken in a seeded order within each round; so
    the per-class counts differ by at most one until a class runs out.
    """
    if count < 1:
        raise ValueError(f"faithfulness_subset must be >= 1 to be scored, got {count}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(size, generator=generator)
    count = min(count, size)
    if labels is None:
        return order[:count].sort().values
    classes, class_of = torch.unique(labels[order], return_inverse=True)  # class_of: (size,)
    grouped, position = torch.sort(class_of, stable=True)  # class-major, seeded within a class
    starts = torch.cumsum(torch.bincount(grouped, minlength=len(classes)), 0) - torch.bincount(
        grouped, minlength=len(classes)
    )
    within = torch.arange(size) - starts[grouped]  # rank of each image inside its class
    class_turn = torch.randperm(len(classes), generator=generator)[grouped]
    key = within * len(classes) + class_turn  # round first, then the class's turn in the round
    chosen = order[position[torch.argsort(key)[:count]]]
    return chosen.sort().values


def describe_subset(
    indices: Tensor, labels: Tensor | None, size: int, class_names: Sequence[str] | None = None
) -> str:
    """One log line: how many images of the set are scored, and per-class counts when known."""
    head = f"faithfulness_subset: scoring {len(indices)} of {size} validation images"
    if labels is None:
        return head + " (labels unknown: a seeded uniform draw over the indices)"
    classes, counts = torch.unique(labels[indices], return_counts=True)
    total = len(torch.unique(labels))
    names = [
        class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)
        for c in classes.tolist()
    ]
    shown = ", ".join(f"{name}: {n}" for name, n in zip(names, counts.tolist(), strict=True))
    return f"{head}, class-stratified over {len(classes)} of {total} classes ({shown})"


def own_indices(sampler: Any) -> Tensor | None:
    """Dataset indices this process scores under a :class:`DistributedSampler` (its share of the
    set without the padding repeats), or None for any other sampler (one process sees each image
    once).

    A ``DistributedSampler`` orders the ``N`` items (shuffled or not), repeats the first ones to a
    multiple of the process count ``W``, and gives process ``r`` the positions ``r, r + W, ...``;
    positions ``>= N`` are the repeats.
    """
    if not isinstance(sampler, DistributedSampler):
        return None
    given = torch.as_tensor(list(iter(sampler)), dtype=torch.long)
    positions = sampler.rank + sampler.num_replicas * torch.arange(len(given))
    return given[positions < len(sampler.dataset)]
