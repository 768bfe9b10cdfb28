"""The package's import structure: one-way layers, no cycles, no reaching into private names.

Every ``import`` statement of every module under ``lcam/`` (module level and inside functions
alike: a lazy import that goes the wrong way is still a dependency the wrong way) is parsed with
:mod:`ast` and checked against the layer order the README documents.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lcam"

# Lowest layer first; a module may import from its own layer or a lower one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("lcam._io", "lcam.images", "lcam.maps", "lcam.viz", "lcam.explanation"),
    ("lcam.backbone", "lcam.models", "lcam.data"),
    ("lcam.heads",),
    ("lcam.explainers", "lcam.api", "lcam.onnx"),
    ("lcam.metrics",),
    ("lcam.evaluation",),
    ("lcam.training", "lcam.inference", "lcam.visualise"),
    ("lcam.cli", "lcam"),
)

# Old import paths kept as thin re-exports for one release. They may import anything, and
# nothing inside lcam may import them.
COMPAT = frozenset(
    {
        "lcam.heads.lcam",
        "lcam.explainers.activation_max",
    }
)

MAX_LINES = 420


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest prefix naming ``module``'s package or module."""
    best, best_length = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and the README)")
    return best


def imports_of(path: Path) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every lcam import in ``path``."""
    found: list[tuple[str, str | None, int]] = []
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "lcam" or alias.name.startswith("lcam."):
                    found.append((alias.name, None, node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "lcam" or node.module.startswith("lcam."):
                for alias in node.names:
                    found.append((node.module, alias.name, node.lineno))
    return found


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def resolve(imported: str, name: str | None) -> str:
    """The module an import depends on: ``from lcam.x import y`` is lcam.x.y if that is a module."""
    if name is not None and f"{imported}.{name}" in MODULES:
        return f"{imported}.{name}"
    return imported


def parent_packages(module: str) -> list[str]:
    """``lcam.a.b.c`` -> ``[lcam.a, lcam.a.b]``: what importing it runs first (the root package
    ``lcam`` excepted: it is what a user imports, and it imports everything)."""
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(2, len(parts))]


def edges() -> dict[str, set[str]]:
    """Module -> the lcam modules its imports run, including packages' ``__init__`` files that
    run implicitly (importing ``lcam.explainers.base`` runs ``lcam/explainers/__init__.py``)."""
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, path in MODULES.items():
        own_packages = {module, *parent_packages(module)}
        for imported, name, _ in imports_of(path):
            target = resolve(imported, name)
            for dependency in (*parent_packages(target), target):
                if dependency not in own_packages:
                    graph[module].add(dependency)
    return graph


def test_the_layer_map_covers_every_module() -> None:
    for module in MODULES:
        if module not in COMPAT:
            layer_of(module)


def test_imports_only_go_down_the_layers() -> None:
    wrong = []
    for module, path in MODULES.items():
        if module in COMPAT:
            continue
        own = layer_of(module)
        for imported, name, line in imports_of(path):
            target = resolve(imported, name)
            if target in COMPAT:
                wrong.append(f"{path.name}:{line} {module} imports the old path {target}")
            elif target in MODULES and layer_of(target) > own:
                wrong.append(
                    f"{path.name}:{line} {module} (layer {own}) imports {target} "
                    f"(layer {layer_of(target)})"
                )
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_of_another_modules_private_names() -> None:
    wrong = []
    for module, path in MODULES.items():
        for imported, name, line in imports_of(path):
            private = name is not None and name.startswith("_") and not name.startswith("__")
            if private and imported != module:
                wrong.append(f"{path.name}:{line} {module} imports {imported}.{name}")
    assert not wrong, "private names imported across modules:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = edges()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif state.get(target) is None:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if state.get(module) is None:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_each_file_stays_small(module: str) -> None:
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines (at most {MAX_LINES})"


def test_the_checker_sees_a_wrong_way_import(tmp_path: Path) -> None:
    """The parser finds lazy imports inside functions, which the layer rule must also catch."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from lcam.training.module import LCAMModule\n")
    assert imports_of(source) == [("lcam.training.module", "LCAMModule", 2)]
    assert layer_of("lcam.training.module") > layer_of("lcam.metrics.road")
