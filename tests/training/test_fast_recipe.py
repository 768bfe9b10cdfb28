"""The fast recipe's kept-fraction sampling: one fraction per image and step, the same term in
expectation at one masked pass per image instead of ``|P|``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import shapes_module

from lcam.data import SyntheticShapes
from lcam.maps import normalise_maps, upsample_maps
from lcam.training import KeptFractionLoss, relaxed_keep_masks

FRACTIONS = (1.0, 0.5, 0.15)
TEMPERATURE = 0.05


def _setup(count: int = 8) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shipped TinyResNet, ``count`` shapes images, their predicted labels and raw maps
    ``(B, 64, 64)`` half on the object, half noise (so the fractions' losses differ)."""
    module = shapes_module()
    items = [SyntheticShapes(count, image_size=64, seed=5)[index] for index in range(count)]
    images = torch.stack([item["image"] for item in items])
    masks = torch.stack([item["mask"] for item in items]).float()
    with torch.no_grad():
        labels = module.backbone(images).argmax(1)
    noise = torch.rand(masks.shape, generator=torch.Generator().manual_seed(1))
    return module.backbone, images, labels, masks + noise


def _per_fraction_losses(backbone, images, labels, maps) -> torch.Tensor:  # noqa: ANN001
    """Cross-entropy of every image at every fraction, ``(P, B)``, computed apart from the loss."""
    kept = upsample_maps(normalise_maps(maps), tuple(images.shape[-2:]))
    masks = relaxed_keep_masks(kept, FRACTIONS, TEMPERATURE)  # (P, B, H, W)
    with torch.no_grad():
        logits = backbone((images.unsqueeze(0) * masks.unsqueeze(2)).flatten(0, 1))
    losses = F.cross_entropy(logits, labels.repeat(len(FRACTIONS)), reduction="none")
    return losses.view(len(FRACTIONS), -1)


def test_one_draw_scores_the_drawn_fraction_of_each_image() -> None:
    """Given the draws (replayed from the same seed), the estimate is the mean of each image's
    loss at its drawn fraction, to float precision."""
    backbone, images, labels, maps = _setup()
    table = _per_fraction_losses(backbone, images, labels, maps)
    objective = KeptFractionLoss(
        FRACTIONS, TEMPERATURE, sampling="one", generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        estimate = objective(maps, images, labels, backbone)
    drawn = torch.randint(3, (len(labels),), generator=torch.Generator().manual_seed(3))
    expected = table[drawn, torch.arange(len(labels))].mean()
    assert torch.allclose(estimate, expected, atol=1e-5), (float(estimate), float(expected))


def test_the_mean_over_draws_is_the_full_term() -> None:
    """Averaged over 64 steps' draws, the estimate equals the ``sampling="all"`` term within
    4 standard errors (the standard error from the per-image per-fraction losses, exact for
    uniform independent draws); the three fractions' losses differ by far more than that, so a
    draw that favoured one fraction would be caught."""
    backbone, images, labels, maps = _setup()
    table = _per_fraction_losses(backbone, images, labels, maps)  # (P, B)
    with torch.no_grad():
        full = KeptFractionLoss(FRACTIONS, TEMPERATURE)(maps, images, labels, backbone)
        sampled = KeptFractionLoss(
            FRACTIONS, TEMPERATURE, sampling="one", generator=torch.Generator().manual_seed(0)
        )
        draws = 64
        estimates = torch.stack([sampled(maps, images, labels, backbone) for _ in range(draws)])
    assert torch.allclose(full, table.mean(), atol=1e-5)
    # Var of one step's estimate: mean over images of each image's variance over fractions / B.
    step_variance = table.var(dim=0, unbiased=False).mean() / len(labels)
    standard_error = (step_variance / draws).sqrt()
    spread = table.mean(dim=1).max() - table.mean(dim=1).min()
    assert spread > 20 * standard_error, (float(spread), float(standard_error))
    error = (estimates.mean() - full).abs()
    assert error < 4 * standard_error, (float(error), float(standard_error))


def test_the_option_reaches_the_loss_and_cuts_the_passes() -> None:
    """``kept_fraction_options: {sampling: one}`` builds a one-draw term, and a training step
    then runs the network on B images for the term instead of 3 B (counted at the first
    convolution, which every pass of the network runs)."""
    items = [SyntheticShapes(4, image_size=64, seed=2)[index] for index in range(4)]
    batch = {
        "image": torch.stack([item["image"] for item in items]),
        "label": torch.tensor([item["label"] for item in items]),
    }
    seen: dict[str, int] = {}
    for sampling in ("all", "one"):
        module = shapes_module(
            head="tame", kept_fraction_weight=0.5, kept_fraction_options={"sampling": sampling}
        )
        assert module.map_terms["kept_fraction"].sampling == sampling
        module.log_dict = lambda values, **_: None  # no trainer attached
        module.log = lambda name, value, **_: None
        first_conv = next(m for m in module.backbone.modules() if isinstance(m, torch.nn.Conv2d))
        counted: list[int] = []
        hook = first_conv.register_forward_hook(
            lambda _m, inputs, _o, counted=counted: counted.append(len(inputs[0]))
        )
        module.training_step(batch, 0).backward()
        hook.remove()
        seen[sampling] = sum(counted)
    # clean forward (B) + the L-CAM masked pass (B) + the term's passes (3 B or B)
    assert seen == {"all": 5 * 4, "one": 3 * 4}, seen


@pytest.mark.parametrize(
    ("options", "error"),
    [({"sampling": "once"}, ValueError), ({"samplng": "one"}, TypeError)],
)
def test_a_misspelled_option_fails(options: dict, error: type[Exception]) -> None:
    with pytest.raises(error, match="sampling|samplng"):
        shapes_module(head="tame", kept_fraction_weight=0.5, kept_fraction_options=options)
