"""Which images a job explains, and the names of their outputs.

An input's **name** is its path relative to the folder it was found in (``cat.jpg``,
``nested/dog.png``), or its file name when the file was given directly; the extension is kept,
so ``a.jpg`` and ``a.png`` in one folder are two inputs with two sets of outputs. Its outputs
are ``<name>.map.npy`` and ``<name>.overlay.png`` (see :func:`output_names`). When two inputs
from different folders (or files) still share a name, every name becomes the path relative to
the folder that contains all inputs, so names never collide.

Files that an earlier run of the same job wrote (the ``exclude`` set: the outputs an output
folder's journals name) are never inputs, so ``--output`` may be the input folder itself.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "ImageFile", "absolute", "collect_images", "output_names"]

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
MAP_SUFFIX = ".map.npy"
OVERLAY_SUFFIX = ".overlay.png"


@dataclass(frozen=True)
class ImageFile:
    """An input image and the name (a relative path, extension kept) its outputs are named by."""

    path: Path
    name: str


def absolute(path: str | Path) -> Path:
    """``path`` made absolute and normalised without following links (a dangling link stays
    itself), so two spellings of one file compare equal."""
    return Path(os.path.abspath(path))


def output_names(name: str) -> tuple[str, str]:
    """The map and overlay file names of an input named ``name``, relative to the output folder:
    ``(f"{name}.map.npy", f"{name}.overlay.png")``."""
    return f"{name}{MAP_SUFFIX}", f"{name}{OVERLAY_SUFFIX}"


def _found(entry: Path, exclude: Collection[Path]) -> list[tuple[Path, Path]]:
    """``(file, base folder)`` of the images in a folder (recursively) or of one file."""
    if entry.is_dir():
        files = sorted(
            path
            for path in entry.rglob("*")
            if (path.is_file() or path.is_symlink())
            and path.suffix.lower() in IMAGE_SUFFIXES
            and absolute(path) not in exclude
        )
        if not files:
            raise ValueError(
                f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {str(entry)!r}"
            )
        return [(path, entry) for path in files]
    if entry.exists() or entry.is_symlink():
        return [(entry, entry.parent)]
    raise FileNotFoundError(f"input {str(entry)!r} does not exist")


def collect_images(
    inputs: Sequence[str | Path], exclude: Collection[Path] = frozenset()
) -> list[ImageFile]:
    """Expand files and folders (recursively, image suffixes only) into named inputs.

    Args:
        inputs: image files and folders.
        exclude: absolute paths (see :func:`absolute`) never taken from a folder: the outputs an
            earlier run wrote there.

    Returns:
        The inputs in order, each file once (a file reached twice is kept at its first place).

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: a folder holds no images.
    """
    found: dict[Path, tuple[Path, Path]] = {}  # absolute path -> (path as given, base)
    for entry in map(Path, inputs):
        for path, base in _found(entry, exclude):
            found.setdefault(absolute(path), (path, absolute(base)))
    names = [key.relative_to(base).as_posix() for key, (_, base) in found.items()]
    if len(set(names)) < len(names):
        # Same relative path under two inputs: name everything from the folder holding all.
        common = Path(os.path.commonpath([str(key.parent) for key in found]))
        names = [key.relative_to(common).as_posix() for key in found]
    return [ImageFile(path, name) for (path, _), name in zip(found.values(), names, strict=True)]
