"""Random logit equals Quantus's (Pearson similarity) on the same other classes, explaining only
the random class (the explained class's map is given, as in Quantus), and a class-sensitive
explanation scores lower than one that ignores the class."""

from __future__ import annotations

import numpy as np
import quantus
import torch
from metric_cases import quadrant_map, tiny_network
from quantus.functions.similarity_func import correlation_pearson

from lcam.explainers import get_explainer
from lcam.metrics import RandomLogit


def test_matches_quantus_with_the_same_other_classes() -> None:
    model, images, _ = tiny_network()
    explainer = get_explainer("gradient", model.model)  # never an all-zero map

    def explain(inputs: torch.Tensor, classes: torch.Tensor | None):  # noqa: ANN202
        explanation = explainer.explain(inputs, classes)
        return explanation.maps, explanation.targets

    def quantus_explain(model: object, inputs: np.ndarray, targets: np.ndarray, **_: object):  # noqa: ANN202
        return explain(torch.from_numpy(inputs), torch.from_numpy(targets))[0][:, None].numpy()

    maps, targets = explain(images, None)
    reference = quantus.RandomLogit(
        num_classes=5, similarity_func=correlation_pearson, seed=9,
        return_aggregate=False, disable_warnings=True,
    )(
        model=model, x_batch=images.numpy(), y_batch=targets.numpy(),
        a_batch=maps[:, None].numpy(), device="cpu", explain_func=quantus_explain,
    )  # fmt: skip

    class Replayed(RandomLogit):
        def other_classes(self, classes: torch.Tensor) -> torch.Tensor:
            np.random.seed(9)  # Quantus's draw: an index among the K - 1 other classes
            draw = torch.as_tensor(np.random.randint(0, self.num_classes - 1, len(classes)))
            return draw + (draw >= classes).long()

    calls: list[torch.Tensor | None] = []

    def counted(inputs: torch.Tensor, classes: torch.Tensor | None):  # noqa: ANN202
        calls.append(classes)
        return explain(inputs, classes)

    metric = Replayed(counted, num_classes=5)
    metric.update(images, maps, targets)
    # the explained class's map is reused: one explanation per image, of the random class only
    assert len(calls) == 1 and calls[0] is not None and not (calls[0] == targets).any()
    assert abs(metric.compute().item() - float(np.mean(reference))) < 1e-5


def test_class_sensitive_explanation_scores_lower() -> None:
    images = torch.rand(4, 3, 16, 16)
    by_class = {
        0: quadrant_map(1, "tl")[0],
        1: quadrant_map(1, "br")[0],
        2: quadrant_map(1, "tr")[0],
    }

    def sensitive(inputs: torch.Tensor, classes: torch.Tensor | None):  # noqa: ANN202
        classes = torch.zeros(len(inputs), dtype=torch.long) if classes is None else classes
        return torch.stack([by_class[int(c)] for c in classes]), classes

    def blind(inputs: torch.Tensor, classes: torch.Tensor | None):  # noqa: ANN202
        return sensitive(inputs, None)[0], sensitive(inputs, classes)[1]

    scores = {}
    for name, function in {"sensitive": sensitive, "blind": blind}.items():
        metric = RandomLogit(function, num_classes=3)
        classes = torch.zeros(4, dtype=torch.long)
        metric.update(images, function(images, classes)[0], classes)
        scores[name] = metric.compute().item()
    assert scores["blind"] == 1.0 and scores["sensitive"] < 0, scores
