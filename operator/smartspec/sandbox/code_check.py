"""A cheap check of generated Python before it is handed to the tester: does it compile, and
does every module it imports exist where the tests will run?

Contract: specs/CORE-004-generation-runs.md, section "Feedback" (kind CodeDoesNotCompile).

Static on purpose: the generator holds the run token, so generated code is never imported
or executed here (that happens only in the tester, which has no token and no egress). An
import counts as resolvable when it names the standard library, a module the tester image
provides (`TESTER_MODULES`), or a module or package among the generated files. Imports
guarded by `try` (optional dependencies) and relative imports are not checked.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Sequence

from smartspec.api.sandbox import TESTER_MODULES

from . import GeneratedFile

__all__ = ["code_problems"]

MAX_PROBLEMS = 20


def code_problems(files: Sequence[GeneratedFile]) -> list[str]:
    """One line per problem (`path:line: what`), in path order; empty when all is well."""
    local = _local_modules(file.path for file in files)
    known = frozenset(sys.stdlib_module_names) | TESTER_MODULES | local
    problems: list[str] = []
    for file in sorted(files, key=lambda item: item.path):
        if not file.path.endswith(".py"):
            continue
        try:
            text = file.content.decode("utf-8")
            tree = ast.parse(text, filename=file.path)
            compile(tree, file.path, "exec", dont_inherit=True)
        except SyntaxError as error:
            problems.append(f"{file.path}:{error.lineno or 0}: {error.msg}")
            continue
        except (UnicodeDecodeError, ValueError) as error:
            problems.append(f"{file.path}: cannot be compiled: {error}")
            continue
        for line, module in _unguarded_imports(tree):
            if module not in known:
                problems.append(
                    f"{file.path}:{line}: imports {module!r}, which is neither in the standard "
                    "library, nor in the tester image, nor among the generated files"
                )
    return problems[:MAX_PROBLEMS]


def _local_modules(paths: Iterable[str]) -> frozenset[str]:
    """Top-level names importable from the project root: a.py, and a/ holding any .py."""
    names = set()
    for path in paths:
        if not path.endswith(".py"):
            continue
        first = path.split("/", 1)[0]
        names.add(first.removesuffix(".py"))
    return frozenset(names)


def _unguarded_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import that no `try` guards."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.Try | ast.TryStar):
            for statement in node.body:
                visit(statement, True)
            for handler in node.handlers:
                visit(handler, guarded)
            for statement in [*node.orelse, *node.finalbody]:
                visit(statement, guarded)
            return
        if not guarded:
            if isinstance(node, ast.Import):
                found.extend((node.lineno, alias.name.split(".", 1)[0]) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((node.lineno, node.module.split(".", 1)[0]))
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return found
