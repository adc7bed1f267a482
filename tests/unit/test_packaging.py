"""Packaging guards (specs/SPEC-001-overview.md, "Layout").

`operator/` is a source root, never a package: a package named `operator` would shadow the
standard library module that collections, pydantic and kopf import.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import smartspec

REPO = Path(__file__).resolve().parents[2]


def test_operator_directory_is_not_a_package() -> None:
    assert not (REPO / "operator" / "__init__.py").exists()


def test_standard_library_operator_module_still_imports() -> None:
    assert smartspec.__version__, "the package is imported first, then the stdlib module"
    module = importlib.import_module("operator")
    assert module.__file__ is not None
    assert Path(module.__file__).parent != REPO / "operator"
    assert module.itemgetter(1)([0, 7]) == 7


def test_console_script_entry_point_runs() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "smartspec", "--version"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert completed.stdout.strip().startswith("smartspec ")


def test_package_is_typed() -> None:
    assert (REPO / "operator" / "smartspec" / "py.typed").is_file()
