"""The package's architecture, enforced: layers import only downwards, no import cycles, no hidden imports.

Layers, lowest first (a module may import its own layer and the ones below):

    base        errors, atomic, cache, run_files, version
    core        config, objective, networks, model (never Lightning)
    data        data sets and splits (never training, runs or the CLI)
    evaluation  retrieval, measures, probes, figures
    engine      Lightning module, checkpoints, resume, guards, DDP, model selection
    runs        the main job, run folders, report, sweeps, export, trained runs
    zsbir       zero-shot sketch-based retrieval
    cli         the command line

The import graph is read from the source (every ``import`` statement, also those inside functions), so an import
hidden in a function cannot break a layer or close a cycle unnoticed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
LAYERS = {
    "base": ("iiae.errors", "iiae.atomic", "iiae.cache", "iiae.run_files", "iiae.version", "iiae.readers",
             "iiae.outputs"),
    "core": ("iiae.core",),
    "data": ("iiae.data",),
    "evaluation": ("iiae.evaluation",),
    "engine": ("iiae.engine",),
    "runs": ("iiae.runs",),
    "zsbir": ("iiae.zsbir",),
    "cli": ("iiae.cli",),
}
ORDER = list(LAYERS)
CLI_MODULES = ("iiae.cli", "iiae.zsbir.cli")  # may import lazily: `iiae --help` stays fast


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted((SOURCE / "iiae").rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported iiae module, line, inside a function) for every import statement of the module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    inside = {id(node) for function in ast.walk(tree) if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(function)}  # fmt: skip
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if target in known and target != name:
                found.append((target, node.lineno, id(node) in inside))
    return found


def _layer(module: str) -> str | None:
    for layer, prefixes in LAYERS.items():
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return layer
    return None


MODULES = _modules()
GRAPH = {name: _imports(name, path, set(MODULES)) for name, path in MODULES.items()}


def test_every_module_has_a_layer() -> None:
    unplaced = [name for name in MODULES if name != "iiae" and _layer(name) is None]
    assert not unplaced, f"modules outside every layer (add them to LAYERS): {unplaced}"


@pytest.mark.parametrize("name", [name for name in MODULES if name != "iiae"])
def test_imports_only_go_down(name: str) -> None:
    own = ORDER.index(_layer(name))
    for target, line, _ in GRAPH[name]:
        assert target != "iiae", f"{name}:{line} imports the package itself (import the module that defines it)"
        layer = _layer(target)
        assert layer is not None and ORDER.index(layer) <= own, (
            f"{MODULES[name]}:{line}: {name} ({_layer(name)}) imports {target} ({layer}), a higher layer"
        )


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components of the module graph: every one a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target, _, _ in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_no_package_imports_inside_functions_outside_the_cli() -> None:
    """Imports inside functions hide dependencies; only the command line loads lazily (optional third-party
    packages, e.g. scipy or torchvision, are not in this graph and stay allowed)."""
    hidden = [f"{MODULES[name]}:{line} imports {target}" for name, edges in GRAPH.items()
              if not name.startswith(CLI_MODULES) for target, line, inner in edges if inner]  # fmt: skip
    assert not hidden, "\n".join(hidden)


def _lightning_imports(path: Path) -> list[int]:
    """Lines of ``path`` that import Lightning."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])  # fmt: skip
        if any(m == "lightning" or m.startswith(("lightning.", "pytorch_lightning")) for m in modules):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("layer", ["core", "data", "evaluation"])
def test_lower_layers_do_not_import_lightning(layer: str) -> None:
    """The model, the data and the measures work without the training engine (Lightning)."""
    for name, path in MODULES.items():
        if _layer(name) == layer:
            assert not _lightning_imports(path), f"{path}:{_lightning_imports(path)} imports Lightning ({layer})"


# Modules behind the commands that read a trained run (evaluate, translate, retrieve, export, zs-sbir retrieve)
READERS = ("iiae.runs.trained", "iiae.runs.export", "iiae.runs.own_images", "iiae.zsbir.retrieve",
           "iiae.engine.checkpoint_files")  # fmt: skip


@pytest.mark.parametrize("reader", READERS)
def test_reading_a_run_never_reaches_lightning(reader: str) -> None:
    """Nothing a reading command imports, directly or through other modules, imports Lightning (4 s a command)."""
    reached, todo = set(), [reader]
    while todo:
        name = todo.pop()
        if name in reached or name not in MODULES:
            continue
        reached.add(name)
        todo += [target for target, _, _ in GRAPH[name]]
    offenders = {name: _lightning_imports(MODULES[name]) for name in sorted(reached)}
    assert not {name: lines for name, lines in offenders.items() if lines}, f"{reader} reaches Lightning"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The graph reader finds an upward import hidden inside a function (so the tests above can fail)."""
    module = tmp_path / "iiae" / "core" / "bad.py"
    module.parent.mkdir(parents=True)
    module.write_text("def f():\n    from iiae.runs.runner import train_and_evaluate\n    from ..engine import training\n")
    edges = _imports("iiae.core.bad", module, {"iiae.runs.runner", "iiae.engine", "iiae.engine.training"})
    assert ("iiae.runs.runner", 2, True) in edges
    assert ("iiae.engine.training", 3, True) in edges
    assert ORDER.index(_layer("iiae.runs.runner")) > ORDER.index(_layer("iiae.core.bad"))
