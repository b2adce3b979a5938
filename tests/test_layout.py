"""The package layout is the architecture: who may import whom, and how big a module may grow.

core (data, model, training, eval, sql) never imports the command line or W&B (tracking); data never imports
eval (what both need, such as Spider's hardness rules, lives in sql/); sql imports no other package of ours.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "text2sql"
CORE = ("data", "model", "training", "eval", "sql")
FORBIDDEN = {
    **{core: ("text2sql.cli", "text2sql.tracking") for core in CORE},
    "data": ("text2sql.cli", "text2sql.tracking", "text2sql.eval", "text2sql.job", "text2sql.training"),
    "sql": ("text2sql.cli", "text2sql.tracking", "text2sql.eval", "text2sql.data", "text2sql.model",
            "text2sql.training", "text2sql.job"),
}
MAX_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "conf" not in p.relative_to(PKG).parts)


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
