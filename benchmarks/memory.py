"""Peak memory of the tensors one call allocates and holds at once (``peak_tensor_mb``)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any


def peak_tensor_mb(call: Callable[[], Any]) -> float:
    """Peak memory of the tensors that one ``call`` allocates and holds at once, in MiB.

    Every operator the call dispatches is followed (forward, backward and optimiser alike, on any
    device): a new output storage adds its size while a tensor refers to it; memory that existed
    before the call (weights, input images) is not counted. Unlike the process's RSS this is
    exact and independent of the allocator; it leaves out the operators' private scratch
    buffers (e.g. oneDNN workspaces). Untimed: following every operator slows the call down.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class TensorMemory(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.references: dict[int, int] = {}  # storage -> live tensors referring to it
            self.sizes: dict[int, int] = {}
            self.current = self.peak = 0

        def _release(self, storage: int) -> None:
            self.references[storage] -= 1
            if self.references[storage] == 0:
                del self.references[storage]
                self.current -= self.sizes.pop(storage)

        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            output = func(*args, **(kwargs or {}))
            aliasing = any(r.alias_info is not None for r in func._schema.returns)
            for tensor in tree_leaves(output):
                if not isinstance(tensor, torch.Tensor):
                    continue
                storage = tensor.untyped_storage()._cdata
                if storage not in self.references:
                    if aliasing:  # a view of (or in-place write to) memory from before the call
                        continue
                    self.references[storage] = 0
                    self.sizes[storage] = tensor.untyped_storage().nbytes()
                    self.current += self.sizes[storage]
                    self.peak = max(self.peak, self.current)
                self.references[storage] += 1
                weakref.finalize(tensor, self._release, storage)
            return output

    with TensorMemory() as memory:
        call()
    return memory.peak / 2**20
