"""The contract in specs/ keeps up with the code: every field, condition and reason is there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smartspec.api.v1alpha1 import creditbudget, generationrun, spec
from smartspec.builders.crds import build_crds

REPO = Path(__file__).resolve().parents[2]
CORE_001 = (REPO / "specs" / "CORE-001-resources.md").read_text()


def field_paths(node: dict[str, Any], path: str) -> Iterator[str]:
    yield path
    properties = node.get("properties") or node.get("items", {}).get("properties") or {}
    for name, child in properties.items():
        yield from field_paths(child, f"{path}.{name}")


def all_field_paths() -> list[str]:
    paths = []
    for crd in build_crds():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        kind = crd["spec"]["names"]["kind"]
        for part in ("spec", "status"):
            paths += [f"{kind}:{p}" for p in field_paths(schema["properties"][part], part)]
    return paths


@pytest.mark.parametrize("field", all_field_paths())
def test_every_field_is_documented(field: str) -> None:
    kind, path = field.split(":")
    section = CORE_001.split(f"\n### {kind}\n", 1)[1].split("\n### ", 1)[0]
    assert f"`{path}`" in section, f"{field} is missing from specs/CORE-001-resources.md"


@pytest.mark.parametrize("module", [spec, generationrun, creditbudget])
def test_every_condition_type_and_reason_is_documented(module: Any) -> None:
    for constant in [*module.ConditionType, *module.Reason]:
        assert f"`{constant.value}`" in CORE_001, f"{module.__name__}: {constant.value}"


def test_module_docstrings_cite_a_spec() -> None:
    package = REPO / "operator" / "smartspec"
    for path in package.rglob("*.py"):
        if path.name == "__main__.py":
            continue
        text = path.read_text()
        assert "specs/" in text.split('"""')[1], f"{path} does not cite its contract"
