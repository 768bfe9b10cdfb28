"""Models torch.fx cannot trace work through the hook fallback, with the same maps."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import lcam
from lcam.backbone import fallback


class Twin(nn.Module):
    """A small CNN with a shared activation (called twice) and a residual stage."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.stage = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(12, 4)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.stem(x))

    def rest(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.head(x + self.stage(x)))
        return self.fc(x.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.trunk(x))


class Untraceable(Twin):
    """The twin with data-dependent control flow, which torch.fx cannot trace."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk(x)
        if x.sum() >= 0:  # always true after a ReLU; fx cannot know it
            x = self.rest(x)
        return x


def _pair(**options: object) -> tuple[lcam.FrozenBackbone, lcam.FrozenBackbone]:
    torch.manual_seed(0)
    traceable = Twin()
    untraceable = Untraceable()
    untraceable.load_state_dict(traceable.state_dict())
    fallback._WARNED.discard("Untraceable")
    with pytest.warns(RuntimeWarning, match="hook fallback.*re-runs the whole network"):
        slow = lcam.FrozenBackbone(untraceable, input_size=32, **options)
    return lcam.FrozenBackbone(traceable, input_size=32, **options), slow


def test_the_fallback_gives_what_the_fx_split_gives() -> None:
    fast, slow = _pair()
    assert slow.uses_fallback and not fast.uses_fallback
    assert slow.body_graph is None and slow.tail_graph is None
    assert slow.target_layer == fast.target_layer == "act#1"
    images = torch.rand(3, 3, 32, 32)
    a, b = fast.run(images), slow.run(images)
    torch.testing.assert_close(b.features, a.features)
    torch.testing.assert_close(b.logits, a.logits)
    halved = slow.tail(b.features * 0.5, b.skips)
    torch.testing.assert_close(halved, fast.tail(a.features * 0.5, a.skips))
    assert not torch.allclose(halved, b.logits)
    for name in ("gradcam", "gradcampp", "scorecam", "ablationcam"):
        expected = lcam.get_explainer(name, fast).explain(images)
        got = lcam.get_explainer(name, slow).explain(images)
        torch.testing.assert_close(got.maps, expected.maps, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize(
    ("head", "layers"),
    [("lcam_fm", "stage"), ("lcam_img", "stage"), ("tame", ["act#0", "stage", "act#1"])],
)
def test_learned_heads_train_and_explain_the_same_through_the_fallback(
    head: str, layers: str | list[str]
) -> None:
    fast, slow = _pair(target_layer=layers)
    explainers = [lcam.build_explainer(backbone, head=head) for backbone in (fast, slow)]
    assert slow.target_layers == fast.target_layers
    explainers[1].head.load_state_dict(explainers[0].head.state_dict())
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(
        explainers[1].explain(images).maps, explainers[0].explain(images).maps
    )
    attention = torch.rand(2, *fast.layer_sizes[-1])
    outputs = [backbone.run(images) for backbone in (fast, slow)]
    masked = [
        explainer.head.masked_logits(backbone, images, output, attention)
        for explainer, backbone, output in zip(explainers, (fast, slow), outputs, strict=True)
    ]
    torch.testing.assert_close(masked[1], masked[0])


def test_the_fallback_warns_once_per_model_class() -> None:
    _pair()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lcam.FrozenBackbone(Untraceable(), input_size=32)
