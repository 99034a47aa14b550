"""The test folders collect together in any combination, not only as ``pytest tests``.

Test folders are not packages: pytest's default import mode puts each test
module's folder on sys.path and imports it by its bare name, which is what lets
tests import each other (``from test_brick_store import mkfile``) and the shared
``helpers`` package. The price is one flat module namespace over all folders:
two test modules with one basename clash, and ``conftest`` names whichever
folder's conftest was loaded last (the folders given on the command line are
all loaded up front), so a test must never import from ``conftest``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
FOLDERS = ("unit", "contract", "mount", "integration")


def _modules() -> list[Path]:
    return sorted(p for f in FOLDERS for p in (TESTS / f).rglob("*.py")
                  if p.name not in ("conftest.py", "__init__.py"))


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.partition(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def test_no_test_imports_a_conftest() -> None:
    offenders = [str(p.relative_to(TESTS)) for p in _modules() if "conftest" in _imported(p)]
    assert offenders == [], "share test code through tests/helpers/, not conftest"


def test_test_module_basenames_are_unique_across_folders() -> None:
    by_name: dict[str, list[str]] = defaultdict(list)
    for p in _modules():
        by_name[p.stem].append(str(p.relative_to(TESTS)))
    by_name["helpers"].append("helpers/")
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    assert clashes == {}


def test_folders_collect_together() -> None:
    # unit first and contract after it: the order that imported contract's
    # conftest in place of unit's.
    args = [f"tests/{f}" for f in FOLDERS]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *args], cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "error" not in proc.stdout.splitlines()[-1]
