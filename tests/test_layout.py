"""The package's layering: each module imports only from its own layer or lower ones, so there
are no import circles, not even through imports inside functions or for type checking."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "refine"
# Lowest first: the base modules, the stages' subpackages, then what drives them.
LAYERS = (
    "errors",
    "config",
    "progress",
    "io",
    "encode",
    "learn",
    "judge",
    "report",
    "rounds",
    "crowd",
    "prepare",
    "finish",
    "pipeline",
    "update",
    "deploy",
    "review",
    "bench",
    "cli",
    "__main__",
)


def layer(module: str) -> str:
    """``refine.learn.crossfit`` -> ``learn``; ``refine`` itself (its __init__) -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path) -> set[str]:
    """Every refine module ``path`` imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("refine"):
            if node.module == "refine":  # from refine import x: x may be a module
                names |= {f"refine.{alias.name}" for alias in node.names}
            else:
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "refine"}
    return names


def test_every_module_has_a_layer():
    unknown = {layer(m) for m in modules()} - set(LAYERS) - {"__init__"}
    assert not unknown, f"add {sorted(unknown)} to LAYERS in tests/test_layout.py"


@pytest.mark.parametrize("module", sorted(modules()))
def test_a_module_imports_nothing_above_its_layer(module):
    if module == "refine":
        return  # the package's __init__ gathers the public API from every layer
    mine = LAYERS.index(layer(module))
    above = sorted(
        name
        for name in imports(modules()[module])
        if layer(name) in LAYERS and LAYERS.index(layer(name)) > mine
    )
    assert not above, f"{module} ({layer(module)}) imports higher layers: {above}"


def test_each_subpackage_says_what_it_holds():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 10, f"{init} needs a docstring naming its modules"


def test_no_import_circles_within_a_layer():
    known = modules()
    graph = {
        m: {n for n in imports(p) if n in known and n != m and m != "refine"}
        for m, p in known.items()
    }
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            assert state.get(dep) != 1, "import circle: " + " -> ".join([*path, dep])
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
