"""The architecture's import rules and the code style, checked as part of the suite."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_engine_never_imports_qt_or_the_app():
    proc = subprocess.run([str(BIN / "lint-imports")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_clean():
    proc = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _sources() -> list[Path]:
    """The product's Python files (engine, views, desktop_app, main.py, benchmarks)."""
    return [ROOT / "main.py", *(p for d in ("engine", "views", "desktop_app", "benchmarks")
                                for p in sorted((ROOT / d).rglob("*.py")))]


def _project_imports(path: Path) -> list[ast.ImportFrom]:
    tree = ast.parse(path.read_text(), str(path))
    return [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
            and n.module.split(".")[0] in ("engine", "views", "desktop_app")]


def test_no_module_imports_another_modules_private_name():
    found = [f"{p.relative_to(ROOT)}:{n.lineno}: from {n.module} import {a.name}"
             for p in _sources() for n in _project_imports(p) for a in n.names
             if a.name.startswith("_") or any(part.startswith("_") and part != "__init__"
                                               for part in n.module.split("."))]
    assert not found, "\n".join(found)


def test_main_reaches_the_engine_only_through_the_api():
    found = [f"main.py:{n.lineno}: {n.module}" for n in _project_imports(ROOT / "main.py")
             if n.module.startswith("engine") and n.module not in ("engine.api", "engine.errors", "engine.startup")]
    assert not found, "\n".join(found)


def test_the_api_contract_forbids_every_other_engine_module():
    """A new engine module or package is behind the front door from its first commit."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if "engine.api" in c["name"])
    modules = {p.stem if p.is_file() else p.name for p in (ROOT / "engine").iterdir()
               if (p.suffix == ".py" or (p / "__init__.py").exists()) and not p.name.startswith("__")}
    assert {f"engine.{m}" for m in modules - {"api", "errors", "startup"}} == set(contract["forbidden_modules"])
