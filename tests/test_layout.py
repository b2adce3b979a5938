"""The package layout is the architecture: who may import whom, and how big a module may grow.

core (data, model, training, eval, sql) never imports the command line or W&B (tracking, wandb); eval never imports
job (job records what eval scores); data never imports
eval (what both need, such as Spider's hardness rules, lives in sql/); sql imports no other package of ours.
The packages form layers: no two of them import each other, directly or around a longer loop, and no two modules
do (a file circle); a lazy import inside a function counts like one at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "text2sql"
CORE = ("data", "model", "training", "eval", "sql")
FORBIDDEN = {
    **{core: ("text2sql.cli", "text2sql.tracking", "wandb") for core in CORE},
    "data": ("text2sql.cli", "text2sql.tracking", "wandb", "text2sql.eval", "text2sql.job", "text2sql.training"),
    "eval": ("text2sql.cli", "text2sql.tracking", "wandb", "text2sql.job"),  # job records what eval scores
    "sql": ("text2sql.cli", "text2sql.tracking", "wandb", "text2sql.eval", "text2sql.data", "text2sql.model",
            "text2sql.training", "text2sql.job"),
}
MAX_LINES = 500
MAX_FUNCTION_LINES = 80

def _modules(root: Path = PKG) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "conf" not in p.relative_to(root).parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (lazy imports inside functions count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module_name(path: Path, root: Path = PKG) -> str:
    """`text2sql/eval/decoding.py` -> `text2sql.eval.decoding`; a package's `__init__.py` -> the package."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(root: Path = PKG) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (`from a.b import c`: module `a.b.c` when it is one, else
    `a.b`), at any depth in the file."""
    names = {_module_name(p, root): p for p in _modules(root)}

    def module_of(name: str) -> str | None:
        while name and name not in names:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in names.items():
        targets = {module_of(imported) for imported in _imports(path) if imported.split(".")[0] == root.name}
        graph[name] = {t for t in targets if t and t != name and not name.startswith(t + ".")}
    return graph


def _package(module: str, root: Path = PKG) -> str:
    """The subpackage a module belongs to (`text2sql.eval.decoding` -> `eval`); a top-level module is its own
    (`text2sql.errors` -> `errors`; `text2sql` itself -> `text2sql`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _cycles(graph: dict[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted: every import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _package_cycles(graph: dict[str, set[str]], allowed: set[tuple[str, str]] = frozenset()) -> list[list[str]]:
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        for target in targets:
            if (module, target) not in allowed and _package(module) != _package(target):
                packages.setdefault(_package(module), set()).add(_package(target))
    return _cycles(packages)


def _file_circles(graph: dict[str, set[str]], allowed: set[tuple[str, str]] = frozenset()) -> list[list[str]]:
    return _cycles({m: {t for t in targets if (m, t) not in allowed} for m, targets in graph.items()})


def _violations(package: str, imports: set[str]) -> list[str]:
    banned = FORBIDDEN.get(package, ())
    return sorted(name for name in imports if any(name == b or name.startswith(b + ".") for b in banned))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_core_packages_import_neither_the_cli_nor_tracking(package):
    bad = {str(p.relative_to(PKG)): _violations(package, _imports(p)) for p in (PKG / package).rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}, f"{package}/ imports what it must not"


def test_the_check_sees_a_forbidden_import(tmp_path):
    """The rule is not vacuous: a lazy import inside a function is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from text2sql.tracking.logger import make_loggers\n    import text2sql.eval.execute\n")
    assert _violations("data", _imports(probe)) == ["text2sql.eval.execute", "text2sql.tracking.logger",
                                                    "text2sql.tracking.logger.make_loggers"]


def test_no_package_import_cycle():
    cycles = _package_cycles(_import_graph())
    assert not cycles, f"these packages import each other (directly or around a loop): {cycles}"


def test_no_file_circle():
    circles = _file_circles(_import_graph())
    assert not circles, f"these modules import each other (directly or around a loop): {circles}"


def test_the_cycle_checks_see_a_cycle_and_a_circle(tmp_path):
    """Not vacuous: a package cycle through a lazy import, a longer loop, and a file circle are all found."""
    files = {"__init__.py": "", "errors.py": "",
             "a/__init__.py": "", "a/x.py": "from text2sql.b.y import f\n", "a/z.py": "",
             "b/__init__.py": "", "b/y.py": "def f():\n    import text2sql.a.z\n",
             "c/__init__.py": "", "c/p.py": "from text2sql.c import q\n", "c/q.py": "from text2sql.c.p import g\n",
             "d/__init__.py": "", "d/m.py": "import text2sql.e.n\n", "e/__init__.py": "",
             "e/n.py": "from text2sql.f.o import h\n", "f/__init__.py": "", "f/o.py": "from text2sql.d import m\n",
             "g/__init__.py": "", "g/ok.py": "from text2sql.errors import UserError\nfrom text2sql.a import z\n"}
    root = tmp_path / "text2sql"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    graph = _import_graph(root)
    assert _package_cycles(graph) == [["a", "b"], ["d", "e", "f"]]
    assert _file_circles(graph) == [["text2sql.c.p", "text2sql.c.q"], ["text2sql.d.m", "text2sql.e.n", "text2sql.f.o"]]
    assert _package_cycles(graph, {("text2sql.b.y", "text2sql.a.z")}) == [["d", "e", "f"]]  # an allowed edge


def test_no_module_is_longer_than_the_limit():
    long = {str(p.relative_to(PKG)): n for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) >= MAX_LINES}
    assert not long, f"split these modules (>= {MAX_LINES} lines): {long}"


def test_no_function_is_longer_than_the_limit():
    long = {f"{p.relative_to(PKG)}:{node.name}": node.end_lineno - node.lineno + 1
            for p in _modules() for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES}
    assert not long, f"split these functions (> {MAX_FUNCTION_LINES} lines): {long}"


def test_the_core_and_the_run_import_no_wandb():
    """logger=csv never imports wandb: everything train.py imports for a run without the W&B logger."""
    code = ("import sys\n"
            "import text2sql.training.module, text2sql.training.checkpoint, text2sql.eval.callback\n"
            "import text2sql.job.lifecycle, text2sql.job.history, text2sql.job.resume, text2sql.tracking.logger\n"
            "import text2sql.tracking.artifacts, text2sql.inference.predict, text2sql.data.datamodule\n"
            "print('wandb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=PKG.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
