"""The package's shape, checked on its source: layers import only downward, no import loops, the library never imports
the examples' harness (`hf_kd.runs`), and modules and functions stay readable (ARCHITECTURE.md's rules)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_kd"

# Bottom to top; a module may import its own layer and the layers below it. `hf_kd/__init__.py` (the public names,
# imported lazily) is outside the layers.
LAYERS = [
    {"losses", "batch", "utils"},
    {"data", "models", "features"},
    {"placement"},
    {"teacher"},
    {"report"},
    {"training"},
    {"runs"},
]
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 75


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(name: str, path: Path) -> set[str]:
    """The hf_kd modules `name` imports (absolute names under hf_kd, module level and inside functions alike)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("hf_kd"):
                target = node.module.removeprefix("hf_kd").lstrip(".")
            else:
                continue
            found.add(target)
            found.update(f"{target}.{alias.name}".lstrip(".") for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("hf_kd.") for a in node.names if a.name.startswith("hf_kd."))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(name, path) if m in modules and m != name} for name, path in modules.items()}


def _layer(module: str) -> int | None:
    top = module.split(".")[0]
    return next((index for index, layer in enumerate(LAYERS) if top in layer), None)


def test_every_module_has_a_layer():
    assert [m for m in _modules() if m and _layer(m) is None] == []


def test_layers_import_only_downward_and_the_library_never_imports_the_harness():
    upward = [
        f"{module} -> {target}"
        for module, targets in _graph().items()
        if module
        for target in targets
        if target and _layer(target) > _layer(module)
    ]
    assert upward == []


def test_no_import_loops():
    graph = _graph()
    # Package __init__s that only document their package import nothing; a loop through one would still show here.
    state: dict[str, int] = {}
    loops = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                loops.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert loops == []


def test_modules_and_functions_stay_readable():
    too_long = []
    for name, path in _modules().items():
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"module {name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"function {name}.{node.name}: {length} lines")
    assert too_long == []


def test_the_checks_see_what_they_check():
    # The checks above would pass on an empty graph: make sure they read the real package.
    graph = _graph()
    assert "training.trainer" in graph and "teacher.precompute" in graph["training.trainer"]
    assert _layer("training.trainer") > _layer("teacher.loading") > _layer("losses.logit")
