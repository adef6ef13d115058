"""The layout's rules, checked on the source (no imports run): a stage never imports one above
it, no module imports itself round a circle, and modules and functions stay short enough to
hold in mind at once (README, Architecture)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "kdistill"
# Lower numbers sit lower: a module may import its own level or below, never above.
LEVELS = {"data": 0, "students": 1, "teachers": 1, "evaluation": 2, "training": 3, "shipping": 4}
BASE = {"kdistill.errors", "kdistill.files", "kdistill.config"}  # below every stage
COMMANDS = 5
MAX_MODULE_LINES = 420  # "about 400"
MAX_FUNCTION_LINES = 65  # "about 60"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:`, which only type checkers import."""
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every kdistill module this file imports when it runs, at module level or inside a
    function (annotations-only imports under TYPE_CHECKING do not count)."""
    found: set[str] = set()
    for node in runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdistill"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
    return found - {"kdistill"}


def level(module: str) -> int:
    if module in BASE or module.startswith("kdistill.config."):
        return -1
    parts = module.split(".")
    return LEVELS.get(parts[1], COMMANDS) if len(parts) > 2 else COMMANDS


def upward(known: dict[str, Path]) -> list[str]:
    return [
        f"{m} -> {t}"
        for m, path in known.items()
        for t in imports(path, known)
        if level(m) >= 0 and level(t) > level(m)
    ]


def test_no_stage_imports_a_stage_above_it() -> None:
    assert upward(modules()) == []


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    """The rule sees what it forbids: a training module importing the distill command."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from kdistill.distill import distill\n")
    known = {**modules(), "kdistill.training.bad": bad}
    assert upward(known) == ["kdistill.training.bad -> kdistill.distill"]


def test_no_import_circles() -> None:
    known = modules()
    graph = {m: imports(p, known) & known.keys() for m, p in known.items()}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str], done: set[str]) -> None:
        for nxt in graph[node]:
            if nxt in path:
                circles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt], done)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], done)
    assert circles == []


def docstring_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A docstring is documentation (kd_loss's carries its formula), not code to hold in mind."""
    first = node.body[0]
    is_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    return (
        first.end_lineno - first.lineno + 1 if is_doc and isinstance(first.value.value, str) else 0
    )


def test_modules_and_functions_stay_short() -> None:
    long_modules, long_functions = [], []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1 - docstring_lines(node)
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.name}:{node.name}: {length} lines")
    assert long_modules == []
    assert long_functions == []


def test_the_formatter_shapes_all_code() -> None:
    skips = [p.name for p in SRC.rglob("*.py") if "fmt: skip" in p.read_text()]
    assert skips == []
