"""Where the class evidence reaches the patch tokens: the gradient CAMs' layer of class-token
models.

In a class-token transformer (ViT, DeiT, PiT, the Hugging Face and torchvision ViTs) the head
reads only the class token of the last block's output, so the logits do not depend on that
output's patch tokens: every gradient CAM at the last block is blank. The evidence reaches the
patch tokens at the input of the last block's attention (timm ``blocks[-1].norm1``), which is
where the Grad-CAM literature (and pytorch-grad-cam's ViT tutorial) takes such models.
:func:`evidence_reaches` tests a split on a probe image; :func:`attention_input_layer` names the
module whose output is the input of the last attention that runs before a layer completes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lcam.backbone.targets import run_hooked, site_name

if TYPE_CHECKING:
    from lcam.backbone.frozen import FrozenBackbone

__all__ = ["attention_input_layer", "evidence_reaches"]


def evidence_reaches(backbone: FrozenBackbone, images: Tensor) -> bool:
    """Whether the predicted logit of ``images`` ``(B, 3, H, W)`` has a nonzero gradient at
    some grid cell of the backbone's split layer (prefix tokens left out)."""
    # Asked while composing a warning, possibly inside Lightning's test loop (inference mode,
    # where enable_grad alone records nothing): leave inference mode, on an ordinary copy.
    with torch.inference_mode(False), torch.enable_grad():
        with torch.no_grad():
            features, skips = backbone.body(images.clone())
        features = features.detach().requires_grad_(True)
        logits = backbone.tail(features, skips)
        score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        (gradient,) = torch.autograd.grad(score, features, allow_unused=True)
    return gradient is not None and bool(backbone.grid(gradient).abs().amax() > 0)


def _is_attention(name: str, module: nn.Module) -> bool:
    return "attention" in type(module).__name__.lower() or name.rsplit(".", 1)[-1] == "attn"


def attention_input_layer(model: nn.Module, example: Tensor, before: str) -> str | None:
    """Target name of the module whose output the last attention module that starts before
    ``before`` (a module name) completes takes as input; ``None`` when there is none."""
    names = {module: name for name, module in model.named_modules() if name}
    events: list[tuple[str, str, int, Any]] = []  # (kind, name, call, tensor id)
    calls: dict[str, int] = {}

    def done(module: nn.Module, _inputs: Any, output: Any) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        if isinstance(output, Tensor):
            events.append(("out", name, calls[name] - 1, id(output)))
        elif name == before:
            events.append(("out", name, calls[name] - 1, None))

    def starts(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        events.append(("attention", names[module], 0, id(first) if first is not None else None))

    handles = [module.register_forward_hook(done) for module in names]
    handles += [
        module.register_forward_pre_hook(starts, with_kwargs=True)
        for module, name in names.items()
        if _is_attention(name, module)
    ]
    run_hooked(model, example, handles)
    end = max((i for i, e in enumerate(events) if e[0] == "out" and e[1] == before), default=None)
    if end is None:
        return None
    attentions = [i for i in range(end) if events[i][0] == "attention" and events[i][3]]
    if not attentions:
        return None
    start = attentions[-1]
    for kind, name, call, tensor in reversed(events[:start]):
        if kind == "out" and tensor == events[start][3]:
            return site_name(name, call, calls[name])
    return None
