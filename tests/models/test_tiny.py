"""Tests for the TinyResNet backbone and its shipped SyntheticShapes weights."""

import pytest
import torch
import torch.fx

from lcam.data.synthetic import SyntheticShapes
from lcam.models import TinyResNet
from lcam.models.tiny import SHAPES_WEIGHTS

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _stage_shapes(model, x):
    shapes = {}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape))
        )
        for name in ("stem", "layer1", "layer2", "layer3", "layer4", "avgpool")
    ]
    logits = model(x)
    for hook in hooks:
        hook.remove()
    return logits, shapes


def test_output_and_stage_shapes_at_64px():
    model = TinyResNet().eval()
    with torch.no_grad():
        logits, shapes = _stage_shapes(model, torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 6)
    assert shapes == {
        "stem": (2, 32, 64, 64),
        "layer1": (2, 32, 32, 32),
        "layer2": (2, 64, 16, 16),
        "layer3": (2, 128, 8, 8),
        "layer4": (2, 128, 8, 8),
        "avgpool": (2, 128, 1, 1),
    }


def test_other_num_classes_width_and_input_size():
    model = TinyResNet(num_classes=3, width=8).eval()
    with torch.no_grad():
        logits, shapes = _stage_shapes(model, torch.randn(5, 3, 48, 48))
    assert logits.shape == (5, 3)
    assert shapes["layer4"] == (5, 32, 6, 6)
    assert model.fc.in_features == 32 and model.fc.out_features == 3
    with pytest.raises(ValueError):
        TinyResNet(num_classes=0)


def test_structure_and_parameter_count():
    model = TinyResNet()
    assert isinstance(model.avgpool, torch.nn.AdaptiveAvgPool2d)
    assert isinstance(model.layer4[-1].relu2, torch.nn.ReLU)
    # projection shortcuts exactly where the shape changes
    assert isinstance(model.layer4[0].downsample, torch.nn.Identity)
    for layer in (model.layer1, model.layer2, model.layer3):
        assert isinstance(layer[0].downsample[0], torch.nn.Conv2d)
    assert sum(p.numel() for p in model.parameters()) < 700_000


def test_fx_symbolic_trace_matches_eager():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    # non-trivial BN statistics and residual-branch scales so every path matters
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    traced = torch.fx.symbolic_trace(model)
    targets = {node.target for node in traced.graph.nodes if node.op == "call_module"}
    assert {"layer4.0.conv2", "layer4.0.relu2", "avgpool", "fc"} <= targets
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


def test_backward_reaches_all_parameters():
    torch.manual_seed(0)
    model = TinyResNet(width=8)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_shipped_weights_classify_held_out_shapes():
    assert SHAPES_WEIGHTS.is_absolute() and SHAPES_WEIGHTS.is_file()
    assert SHAPES_WEIGHTS.stat().st_size < 2_000_000
    state = torch.load(SHAPES_WEIGHTS, map_location="cpu", weights_only=True)
    model = TinyResNet(num_classes=6, width=32)
    model.load_state_dict(state, strict=True)
    model.eval()

    dataset = SyntheticShapes(200, num_classes=6, image_size=64, seed=1)
    batch = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([item["image"] for item in batch])
    labels = torch.stack([item["label"] for item in batch])
    inputs = ((images - MEAN) / STD).contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)  # faster on CPU, same numbers
    with torch.inference_mode():
        predictions = torch.cat([model(chunk).argmax(dim=1) for chunk in inputs.split(50)])
    accuracy = float((predictions == labels).float().mean())
    assert accuracy >= 0.90, f"held-out accuracy {accuracy:.3f}"
