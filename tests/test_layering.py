"""The package's import structure: one-way layers, no cycles, no reaching into private names.

Every ``import`` statement of every module under ``lcam/`` (module level and inside functions
alike: a lazy import that goes the wrong way is still a dependency the wrong way; relative
imports resolved against the module's package) is parsed with :mod:`ast` and checked against the
layer order the README documents. Private names are refused however they are reached: imported
by name, or as an attribute of an imported module (``fallback._WARNED``). Import cycles are
looked for in the static graph, where a module importing a name from its own package's
``__init__`` depends on that ``__init__``, and by importing every module in a fresh interpreter.
The 420-line size rule covers every Python file of the repository.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lcam"

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
# nothing inside lcam may import them. An entry whose file is gone is simply not checked.
# None today: lcam.heads.lcam and lcam.explainers.activation_max are deleted.
COMPAT: frozenset[str] = frozenset()

MAX_LINES = 420


@dataclass(frozen=True)
class Import:
    """One imported lcam module, or one name imported from it, at a line of a file."""

    module: str  # absolute, also for a relative import
    name: str | None  # ``from module import name``; None for ``import module``
    line: int
    binds: tuple[str, str] | None = None  # (local name, the lcam module bound to it)
    typing_only: bool = False  # under ``if TYPE_CHECKING:``: never runs


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def find_modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(path, package): path for path in sorted(package.rglob("*.py"))}


MODULES = find_modules()


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


def absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module of ``from <node.module> import ...`` written in ``module``."""
    if node.level == 0:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def typing_only_lines(tree: ast.Module) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (imports there never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        name = getattr(test, "id", getattr(test, "attr", None))
        if name == "TYPE_CHECKING":
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports_of(
    path: Path, module: str = "probe", modules: dict[str, Path] = MODULES
) -> list[Import]:
    """Every lcam import in ``path`` (the file of ``module``), relative ones made absolute."""
    found: list[Import] = []
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    typing_only, is_package = typing_only_lines(tree), path.name == "__init__.py"
    for node in ast.walk(tree):
        hidden = node.lineno in typing_only if isinstance(node, ast.stmt) else False
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "lcam" or alias.name.startswith("lcam."):
                    # ``import lcam.x`` binds ``lcam``; ``import lcam.x as y`` binds y to lcam.x
                    binds = (alias.asname, alias.name) if alias.asname else ("lcam", "lcam")
                    found.append(Import(alias.name, None, node.lineno, binds, hidden))
        elif isinstance(node, ast.ImportFrom):
            source = absolute(node, module, is_package)
            if source != "lcam" and not source.startswith("lcam."):
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                binds = (alias.asname or alias.name, submodule) if submodule in modules else None
                found.append(Import(source, alias.name, node.lineno, binds, hidden))
    return found


def private_attributes(path: Path, module: str, modules: dict[str, Path]) -> list[str]:
    """``line: module._name`` for every private attribute reached through a module binding."""
    bound = dict(item.binds for item in imports_of(path, module, modules) if item.binds)
    wrong = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Attribute):
            continue
        chain, inner = [node.attr], node.value
        while isinstance(inner, ast.Attribute):
            chain.insert(0, inner.attr)
            inner = inner.value
        if not isinstance(inner, ast.Name) or inner.id not in bound:
            continue
        owner = bound[inner.id]
        for attribute in chain:  # walk down submodules; stop at the first non-module
            if f"{owner}.{attribute}" in modules and not attribute.startswith("_"):
                owner = f"{owner}.{attribute}"
                continue
            if attribute.startswith("_") and not attribute.startswith("__") and owner != module:
                wrong.append(f"{node.lineno}: {owner}.{attribute}")
            break
    return sorted(set(wrong))


def resolve(item: Import, modules: dict[str, Path] = MODULES) -> str:
    """The module an import depends on: ``from lcam.x import y`` is lcam.x.y if that is a module."""
    if item.name is not None and f"{item.module}.{item.name}" in modules:
        return f"{item.module}.{item.name}"
    return item.module


def parent_packages(module: str) -> list[str]:
    """``lcam.a.b.c`` -> ``[lcam.a, lcam.a.b]``: what importing it runs first (the root package
    ``lcam`` excepted: it is what a user imports, and it imports everything)."""
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(2, len(parts))]


def edges(modules: dict[str, Path] = MODULES) -> dict[str, set[str]]:
    """Module -> the lcam modules its imports run.

    An import depends on the module it names, *including* the module's own package (``from
    lcam.backbone import FrozenBackbone`` inside ``lcam/backbone/x.py`` needs
    ``lcam/backbone/__init__.py`` to have run to its end), and on the ``__init__`` files of the
    target's other packages, which run implicitly (importing ``lcam.explainers.base`` from
    ``lcam.heads`` runs ``lcam/explainers/__init__.py``). Imports under ``if TYPE_CHECKING:``
    never run and are left out.
    """
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for module, path in modules.items():
        own_packages = {module, *parent_packages(module)}
        for item in imports_of(path, module, modules):
            if item.typing_only:
                continue
            target = resolve(item, modules)
            implicit = [p for p in parent_packages(target) if p not in own_packages]
            graph[module].update(d for d in (*implicit, target) if d != module)
    return graph


def cycles_in(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    found: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif state.get(target) is None:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if state.get(module) is None:
            visit(module, [module])
    return found


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
        for item in imports_of(path, module):
            target = resolve(item)
            if target in COMPAT:
                wrong.append(f"{path.name}:{item.line} {module} imports the old path {target}")
            elif target in MODULES and layer_of(target) > own:
                wrong.append(
                    f"{path.name}:{item.line} {module} (layer {own}) imports {target} "
                    f"(layer {layer_of(target)})"
                )
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_of_another_modules_private_names() -> None:
    wrong = []
    for module, path in MODULES.items():
        for item in imports_of(path, module):
            name = item.name
            private = name is not None and name.startswith("_") and not name.startswith("__")
            if private and f"{item.module}.{name}" not in MODULES and item.module != module:
                wrong.append(f"{path.name}:{item.line} {module} imports {item.module}.{name}")
        wrong += [f"{path.name}:{hit} (reached in {module})" for hit in
                  private_attributes(path, module, MODULES)]  # fmt: skip
    assert not wrong, "private names reached across modules:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    cycles = cycles_in(edges())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


FRESH_IMPORTS = r"""
import contextlib, importlib, io, json, sys, traceback

def lcam_modules():
    return {key for key in sys.modules if key == "lcam" or key.startswith("lcam.")}

loaded, checked, failed = {}, [], {}
for name in sorted(sys.argv[1:], key=lambda n: (n.count("."), n)):
    parent = name.rpartition(".")[0]
    if name in loaded.get(parent, ()):
        continue  # importing it first runs its package first, which imports it: checked there
    for key in lcam_modules():
        del sys.modules[key]
    sys.argv[1:] = ["--help"]  # a package's __main__ runs its command line: let it print help
    checked.append(name)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            importlib.import_module(name)
    except SystemExit as done:
        if done.code not in (0, None):
            failed[name] = f"SystemExit({done.code})"
    except BaseException:
        failed[name] = traceback.format_exc(limit=-3)
    loaded[name] = lcam_modules()
print(json.dumps({"checked": checked, "failed": failed}))
"""


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """Each module imported first (with no other lcam module loaded), in a fresh interpreter.

    Importing ``lcam.a.b`` first runs ``lcam/__init__.py``, then ``lcam/a/__init__.py``, then
    ``b``; when importing ``lcam.a`` first already loads ``lcam.a.b``, importing ``lcam.a.b``
    first runs exactly the same code, so it is checked by that import. Every other module is
    imported with every lcam module unloaded before it, in one interpreter: third-party modules
    stay loaded (they take no part in an lcam cycle), which keeps this to seconds.
    """
    command = [sys.executable, "-c", FRESH_IMPORTS, *MODULES]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "lcam" in report["checked"] and len(report["checked"]) > 1
    assert not report["failed"], "modules that fail when imported first:\n" + "\n".join(
        f"{name}:\n{error}" for name, error in report["failed"].items()
    )


def python_files() -> list[Path]:
    """Every Python file of the repository (git's view: tracked and new, not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if listed.returncode == 0:
        files = [ROOT / line for line in listed.stdout.splitlines()]
    else:  # not a git checkout: every file outside hidden and build directories
        skip = {"build", "dist", "__pycache__", "node_modules"}
        files = [
            path
            for path in ROOT.rglob("*.py")
            if not any(part.startswith(".") or part in skip for part in path.parts)
        ]
    return sorted(path for path in files if path.is_file())


def test_every_python_file_stays_small() -> None:
    """lcam/, tests, benchmarks, scripts and the top-level scripts alike."""
    files = python_files()
    assert {"train.py", "infer.py"} <= {p.name for p in files} and len(files) > len(MODULES)
    counts = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in files}
    large = [f"{p.relative_to(ROOT)}: {n} lines" for p, n in counts.items() if n > MAX_LINES]
    assert not large, f"files over {MAX_LINES} lines:\n" + "\n".join(large)


def write_package(root: Path, files: dict[str, str]) -> dict[str, Path]:
    """A throw-away package ``lcam`` under ``root`` (files by relative path) and its modules."""
    for relative, source in files.items():
        path = root / "lcam" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return find_modules(root / "lcam")


def test_the_checker_sees_a_wrong_way_import(tmp_path: Path) -> None:
    """The parser finds lazy imports inside functions, which the layer rule must also catch."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from lcam.training.module import LCAMModule\n")
    assert imports_of(source) == [Import("lcam.training.module", "LCAMModule", 2)]
    assert layer_of("lcam.training.module") > layer_of("lcam.metrics.road")


def test_the_checker_sees_relative_and_aliased_private_names(tmp_path: Path) -> None:
    modules = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a/__init__.py": "",
            "a/x.py": "_y = 1\n",
            "a/b.py": "from .x import _y\nfrom . import x as alias\nprint(alias._y)\n",
            "c.py": "import lcam.a.x\nfrom lcam.a import x\nprint(lcam.a.x._y, x._y)\n",
        },
    )
    relative = imports_of(modules["lcam.a.b"], "lcam.a.b", modules)
    assert Import("lcam.a.x", "_y", 1) in relative
    assert private_attributes(modules["lcam.a.b"], "lcam.a.b", modules) == ["3: lcam.a.x._y"]
    assert private_attributes(modules["lcam.c"], "lcam.c", modules) == ["3: lcam.a.x._y"]
    assert private_attributes(modules["lcam.a.x"], "lcam.a.x", modules) == []


def test_the_checker_sees_a_cycle_through_a_package_init(tmp_path: Path) -> None:
    """``lcam/a/__init__.py`` imports ``lcam.a.x``, which imports a name from ``lcam.a``: the
    package is only partly initialised when ``x`` asks for it."""
    files = {"__init__.py": "", "a/__init__.py": "from lcam.a.x import f\nG = 1\n"}
    cyclic = write_package(tmp_path, {**files, "a/x.py": "from lcam.a import G\nf = G\n"})
    assert cycles_in(edges(cyclic)) == [["lcam.a", "lcam.a.x", "lcam.a"]]
    fine = write_package(tmp_path / "ok", {**files, "a/x.py": "f = 1\n"})
    assert cycles_in(edges(fine)) == []
