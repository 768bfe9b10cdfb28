"""Weights files as data: state_dicts from ``.safetensors`` or ``torch.load(weights_only=True)``.

No file is ever unpickled with code execution; a file that is not a flat dict of tensors is an
error naming the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from torch import Tensor, nn

from lcam._io import load_data

__all__ = [
    "WeightsUnavailableError",
    "is_weights_file",
    "load_state_dict_file",
    "load_weights_into",
]

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


class WeightsUnavailableError(RuntimeError):
    """Raised when requested backbone weights cannot be obtained (e.g. no network)."""


def is_weights_file(weights: str) -> bool:
    """Whether ``weights`` names a local file rather than a weights tag."""
    return Path(weights).suffix in STATE_DICT_SUFFIXES or Path(weights).is_file()


def file_digest(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256 (identifies the weights in metadata)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise ImportError(
            f"reading {str(path)!r} needs the safetensors package: pip install safetensors"
        ) from error
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # header or payload corrupt: name the file, keep the cause
        raise ValueError(f"{str(path)!r} is not a readable .safetensors file: {error}") from error


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Load a state_dict from ``.safetensors`` or a ``torch.save`` file, running no code from it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    state = load_data(path, "a loadable state_dict")  # ValueError naming the file if it holds code
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{str(path)!r} does not hold a state_dict (a dict of tensors)")
    return state


def load_weights_into(network: nn.Module, weights: str | Path, model: str) -> str:
    """Load a weights file into ``network`` (strictly); returns the weights' identity string."""
    path = Path(weights)
    state = load_state_dict_file(path)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"weights file {str(path)!r} does not fit model {model!r}: {error}"
        ) from error
    return f"file:{path.name}:sha256={file_digest(path)}"
