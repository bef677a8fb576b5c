"""The package's layout rules, checked from its files: a folder per job, entry points only at the top,
no import circle, the Flower apps free of the runner, and docs/layout.md naming every module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from fedmpq_flwr.methods.catalog import CATALOG

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fedmpq_flwr"
ENTRY_POINTS = {"__init__", "client_app", "server_app", "main", "launch", "evaluate", "deploy"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """The package's modules that `path` imports anywhere (at module level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in MODULES}


def test_only_the_entry_points_sit_at_the_top() -> None:
    top = {path.stem for path in PACKAGE.glob("*.py")}
    assert top == ENTRY_POINTS and len(top) <= 8


def test_no_import_circle() -> None:
    """Depth-first search for a back edge over every import between the package's modules."""
    graph = {name: imported_modules(path) - {name} for name, path in MODULES.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            assert state.get(target) != "open", "import circle: " + " -> ".join([*trail, name, target])
            if target not in state:
                visit(target, [*trail, name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_the_flower_apps_load_nothing_of_the_runner() -> None:
    code = (
        "import sys, fedmpq_flwr.server_app, fedmpq_flwr.client_app\n"
        "runner = ('fedmpq_flwr.runner', 'fedmpq_flwr.main', 'fedmpq_flwr.launch', 'fedmpq_flwr.deploy')\n"
        "print(sorted(m for m in sys.modules if m.startswith(runner)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_entry_points_are_thin() -> None:
    """`python -m fedmpq_flwr.X` files hold no logic: a docstring, an import and the call."""
    for name in ENTRY_POINTS - {"__init__", "client_app", "server_app"}:
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        assert not [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))], name


def test_a_module_and_a_method_never_share_a_name() -> None:
    method_files = {PACKAGE / "methods" / f"{spec.module}.py" for spec in CATALOG.values()}
    clashes = [path for path in PACKAGE.rglob("*.py") if path.stem in CATALOG and path not in method_files]
    assert clashes == []


def test_docs_layout_names_every_module() -> None:
    """Each module appears in docs/layout.md by its path inside the package, e.g. `data/load.py`."""
    layout = (REPO / "docs" / "layout.md").read_text()
    paths = [path.relative_to(PACKAGE).as_posix() for path in sorted(PACKAGE.rglob("*.py"))]
    assert [path for path in paths if f"`{path}`" not in layout] == []
