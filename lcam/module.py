"""Deprecated import path, kept for one release: use :mod:`lcam.training.module`
(``from lcam.training import LCAMModule``)."""

from lcam.training.module import LCAMModule
from lcam.training.recipe import paper_optimizer, paper_scheduler

__all__ = ["LCAMModule", "paper_optimizer", "paper_scheduler"]
