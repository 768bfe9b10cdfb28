"""The evidence probe answers inside Lightning's test loop (inference mode) as outside it: it
runs when a degenerate map's warning is composed, e.g. for a gallery row at the end of a
``train.py test`` comparison, where it crashed the run."""

from __future__ import annotations

import torch
from helpers import shapes_module

from lcam.backbone.evidence import evidence_reaches


def test_the_probe_gives_the_same_answer_in_inference_mode() -> None:
    backbone = shapes_module().backbone
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    outside = evidence_reaches(backbone, images)
    with torch.inference_mode():
        inside = evidence_reaches(backbone, images.clone())
    assert outside and inside
