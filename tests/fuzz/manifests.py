"""Malformed manifests made from the examples by seeded mutation: wrong types, boundary values,
huge strings, unicode, unknown and missing fields, deep nesting, duplicate keys.

Each case says which field it broke (its wire path, `spec.requirements[0].id`), so a test can
check that a rejection names that field, or a field above or below it.
"""

from __future__ import annotations

import copy
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "todo-service"
SOURCES = ("spec.yaml", "generationrun-llm.yaml", "generationrun-builtin.yaml", "creditbudget.yaml")
Path_ = tuple[str | int, ...]

WRONG_TYPES: list[Any] = [123, -1, 1.5, True, None, "text", [], {}, ["a"], {"k": "v"}]
BOUNDARY_INTS = [-1, 0, 2**31, 2**53 + 1, 2**63, 10**30]
STRINGS = [
    "",
    " ",
    "a" * 300,
    "x" * 70_000,
    "名前-🙂",
    "\u202eevil",
    "nul\x00byte",
    "line\nbreak",
    "İ" * 64,
    "../../etc/passwd",
    "-leading-dash",
    "UPPER_case",
]
KINDS = ("wrong_type", "boundary", "string", "unknown_field", "missing_field", "deep", "duplicate")


@dataclass(frozen=True)
class Case:
    """One malformed manifest: as a document, or (duplicate keys) as YAML text only."""

    number: int
    kind: str
    path: str
    document: dict[str, Any] | None
    text: str

    def __str__(self) -> str:
        return f"case {self.number} ({self.kind} at {self.path or '<root>'})"


def wire_path(path: Path_) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def related(problem_path: str, case_path: str) -> bool:
    """Whether a problem's field is the broken one, or contains it, or lies inside it."""

    def parts(path: str) -> list[str]:
        return [p for p in re.split(r"[.\[\]]", path) if p]

    a, b = parts(problem_path), parts(case_path)
    shorter = min(len(a), len(b))
    return a[:shorter] == b[:shorter]


def _paths(node: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def _get(node: Any, path: Path_) -> Any:
    for part in path:
        node = node[part]
    return node


def _set(node: Any, path: Path_, value: Any) -> None:
    _get(node, path[:-1])[path[-1]] = value


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"n": value}
    return value


def cases(count: int, seed: int) -> list[Case]:
    """`count` malformed manifests, the same ones for the same seed."""
    rng = random.Random(seed)  # noqa: S311 (test inputs, not secrets)
    examples = [yaml.safe_load((EXAMPLE / name).read_text()) for name in SOURCES]
    made = []
    for number in range(count):
        document = copy.deepcopy(rng.choice(examples))
        kind = KINDS[number % len(KINDS)]
        # Never the identity fields the API server routes by (apiVersion, kind, name):
        # they are broken by their own cases below, rarely.
        paths = [p for p in _paths(document) if len(p) >= 2 and p[0] != "metadata"]
        path = rng.choice(paths)
        value = _get(document, path)
        if kind == "wrong_type":
            choices = [v for v in WRONG_TYPES if type(v) is not type(value)]
            _set(document, path, rng.choice(choices))
        elif kind == "boundary":
            _set(document, path, rng.choice(BOUNDARY_INTS))
        elif kind == "string":
            _set(document, path, rng.choice(STRINGS))
        elif kind == "unknown_field":
            holders = [p for p in paths if isinstance(_get(document, p), dict)]
            path = rng.choice(holders)
            _get(document, path)["unexpectedField"] = rng.choice(WRONG_TYPES[:6])
            path = (*path, "unexpectedField")
        elif kind == "missing_field":
            holders = [p for p in paths if isinstance(_get(document, p[:-1]), dict)]
            path = rng.choice(holders)
            del _get(document, path[:-1])[path[-1]]
        elif kind == "deep":
            _set(document, path, _nested(rng.choice([20, 150, 300])))
        if kind == "deep":  # JSON is YAML, and its encoder is not recursive in Python
            text = json.dumps(document, ensure_ascii=False)
        else:
            text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120)
        if kind == "duplicate":
            text, path = _duplicate_a_key(text, rng)
            made.append(Case(number, kind, wire_path(path), None, text))
            continue
        made.append(Case(number, kind, wire_path(path), document, text))
    return made


def _duplicate_a_key(text: str, rng: random.Random) -> tuple[str, Path_]:
    """The YAML with one `key: value` line repeated right under itself (the same mapping)."""
    lines = text.splitlines()
    candidates = [
        i
        for i, line in enumerate(lines)
        if re.match(r"^(\s*)[A-Za-z][\w-]*: \S", line) and not line.lstrip().startswith("- ")
    ]
    index = rng.choice(candidates)
    key = lines[index].split(":", 1)[0].strip()
    return "\n".join([*lines[: index + 1], lines[index], *lines[index + 1 :]]) + "\n", (key,)
