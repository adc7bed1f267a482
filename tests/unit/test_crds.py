"""The committed CRDs are current, structural, and their CEL rules mean what the models mean.

Contract: specs/CORE-001-resources.md, "CRD generation". The API-server side of the same
rules is exercised by tests/integration (a real kube-apiserver).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from celpy.adapter import json_to_cel

from smartspec.api.v1alpha1 import RESOURCES
from smartspec.builders import crds as crd_builder
from smartspec.cli import main

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
ALLOWED_SCHEMA_KEYS = {
    "type",
    "description",
    "format",
    "enum",
    "default",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "properties",
    "required",
    "items",
    "additionalProperties",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-int-or-string",
}


def test_committed_crds_are_current() -> None:
    assert main(["crds", "--check", "--output-dir", str(CRD_DIR)]) == 0, (
        "crds/ is stale: run `smartspec crds` and commit the result"
    )


def test_regeneration_is_byte_identical(tmp_path: Path) -> None:
    assert main(["crds", "--output-dir", str(tmp_path)]) == 0
    for path in CRD_DIR.glob("*.yaml"):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes()
    assert {p.name for p in tmp_path.iterdir()} == {p.name for p in CRD_DIR.glob("*.yaml")}


def test_drift_check_fails_when_a_model_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["crds", "--output-dir", str(tmp_path)]) == 0
    original = crd_builder.build_crd

    def changed_model(resource: Any) -> dict[str, Any]:
        crd = original(resource)
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        schema["properties"]["spec"]["properties"]["newField"] = {"type": "string"}
        return crd

    monkeypatch.setattr(crd_builder, "build_crd", changed_model)
    assert main(["crds", "--check", "--output-dir", str(tmp_path)]) == 1


def crd_documents() -> list[dict[str, Any]]:
    return [yaml.safe_load(path.read_text()) for path in sorted(CRD_DIR.glob("*.yaml"))]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("crd", crd_documents(), ids=lambda crd: crd["metadata"]["name"])
def test_schema_is_structural(crd: dict[str, Any]) -> None:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        unknown = set(node) - ALLOWED_SCHEMA_KEYS
        assert not unknown, f"{path}: keys a CRD schema cannot carry: {unknown}"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path}: no type"
        if "properties" in node:
            assert "additionalProperties" not in node, path
        scalar_item = path.endswith("[]") and node.get("type") != "object"
        if path.startswith((".spec", ".status")) and path.count(".") >= 2 and not scalar_item:
            assert node.get("description"), f"{path}: no description for kubectl explain"
        if node.get("type") == "string" and "enum" not in node and path.startswith(".spec"):
            assert "maxLength" in node, f"{path}: unbounded string (CEL cost, etcd size)"
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path}: unbounded list"
        if path.startswith(".status"):
            assert "default" not in node, f"{path}: status fields carry no defaults"


@pytest.mark.parametrize("crd", crd_documents(), ids=lambda crd: crd["metadata"]["name"])
def test_crd_names_and_columns(crd: dict[str, Any]) -> None:
    names = crd["spec"]["names"]
    assert names["categories"] == ["smartspec"]
    assert names["shortNames"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert columns[-1] == "Age"


def test_generation_run_columns_tell_the_story() -> None:
    crd = crd_builder.build_crd(RESOURCES[1])
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert {"Phase", "Attempt", "Credits", "Tests", "Age"} <= set(columns)


# ------------------------------------------------------------------ CEL rules, evaluated
# cel-python stands in for the API server's CEL here, so each rule's meaning is checked
# against the pydantic validators on concrete objects; the integration suite checks that
# the real API server accepts and enforces the same rules.

ENV = celpy.Environment()


def rules_at(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for path, node in walk(schema):
        for rule in node.get("x-kubernetes-validations", []):
            yield path, node, rule


def values_at(document: Any, path: str) -> Iterator[Any]:
    """Every value at a walk() path in the document ("[]" fans out over list items)."""
    if path == "":
        yield document
        return
    head, _, rest = path.lstrip(".").partition(".")
    fan_out = head.endswith("[]")
    key = head.removesuffix("[]")
    if not isinstance(document, dict) or key not in document:
        return
    children = document[key] if fan_out else [document[key]]
    for child in children:
        yield from values_at(child, f".{rest}" if rest else "")


def with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server applies it before it runs CEL rules."""
    if isinstance(value, dict) and "properties" in schema:
        result = dict(value)
        for name, child in schema["properties"].items():
            if name not in result and "default" in child:
                result[name] = copy.deepcopy(child["default"])
            if name in result:
                result[name] = with_defaults(child, result[name])
        return result
    if isinstance(value, list) and "items" in schema:
        return [with_defaults(schema["items"], item) for item in value]
    return value


def cel_violations(
    crd: dict[str, Any], new: dict[str, Any], old: dict[str, Any] | None = None
) -> list[str]:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    new = with_defaults(schema, new)
    old = with_defaults(schema, old) if old is not None else None
    violations = []
    for path, _node, rule in rules_at(schema):
        program = ENV.program(ENV.compile(rule["rule"]))
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        new_values = list(values_at(new, path))
        old_values = list(values_at(old, path)) if old is not None else [None] * len(new_values)
        for new_value, old_value in zip(new_values, old_values, strict=False):
            activation = {"self": json_to_cel(new_value)}
            if transition:
                activation["oldSelf"] = json_to_cel(old_value)
            if not bool(program.evaluate(activation)):
                violations.append(rule["message"])
    return violations


def example(name: str) -> dict[str, Any]:
    document = yaml.safe_load((REPO / "examples" / "todo-service" / name).read_text())
    assert isinstance(document, dict)
    return document


CRDS = {crd["spec"]["names"]["kind"]: crd for crd in crd_documents()}


@pytest.mark.parametrize(
    ("kind", "file"),
    [
        ("Spec", "spec.yaml"),
        ("CreditBudget", "creditbudget.yaml"),
        ("GenerationRun", "generationrun-llm.yaml"),
        ("GenerationRun", "generationrun-builtin.yaml"),
    ],
)
def test_examples_satisfy_every_rule(kind: str, file: str) -> None:
    document = example(file)
    assert cel_violations(CRDS[kind], document) == []
    assert cel_violations(CRDS[kind], document, old=document) == []


def test_rule_endpoint_entity_must_be_declared() -> None:
    spec = example("spec.yaml")
    spec["spec"]["interfaces"]["endpoints"][0]["entity"] = "Ghost"
    assert "every endpoint.entity must name an entity declared in interfaces.entities" in (
        cel_violations(CRDS["Spec"], spec)
    )


def test_rule_llm_backend_needs_model() -> None:
    run = example("generationrun-llm.yaml")
    del run["spec"]["generator"]["model"]
    assert cel_violations(CRDS["GenerationRun"], run) == [
        "generator.model is required when generator.backend is llm or agent"
    ]


def test_rule_per_run_limit_within_limit() -> None:
    budget = example("creditbudget.yaml")
    budget["spec"]["perRunLimitCredits"] = budget["spec"]["limitCredits"] + 1
    assert cel_violations(CRDS["CreditBudget"], budget) == [
        "perRunLimitCredits must not exceed limitCredits"
    ]


def test_rule_approved_content_is_immutable() -> None:
    approved = example("spec.yaml")
    approved["spec"]["lifecycle"] = "Approved"
    edited = copy.deepcopy(approved)
    edited["spec"]["requirements"][0]["text"] = "Something else."
    messages = cel_violations(CRDS["Spec"], edited, old=approved)
    assert len(messages) == 1
    assert messages[0].startswith("the content of an Approved or Deprecated Spec is immutable")
    # Adding an optional field that was absent is a content change too.
    added = copy.deepcopy(approved)
    del approved["spec"]["summary"]
    assert cel_violations(CRDS["Spec"], added, old=approved)
    # Metadata and lifecycle moves forward are not content.
    deprecated = copy.deepcopy(added)
    deprecated["spec"]["lifecycle"] = "Deprecated"
    deprecated["metadata"]["labels"] = {"new": "label"}
    assert cel_violations(CRDS["Spec"], deprecated, old=added) == []


def test_rule_draft_content_may_change_and_be_approved_at_once() -> None:
    draft = example("spec.yaml")
    approved = copy.deepcopy(draft)
    approved["spec"]["lifecycle"] = "Approved"
    approved["spec"]["summary"] = "Changed while approving."
    assert cel_violations(CRDS["Spec"], approved, old=draft) == []


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        ("Draft", "Approved", True),
        ("Approved", "Deprecated", True),
        ("Approved", "Draft", False),
        ("Deprecated", "Approved", False),
        ("Deprecated", "Draft", False),
    ],
)
def test_rule_lifecycle_transitions(old: str, new: str, allowed: bool) -> None:
    before = example("spec.yaml")
    before["spec"]["lifecycle"] = old
    after = copy.deepcopy(before)
    after["spec"]["lifecycle"] = new
    assert (cel_violations(CRDS["Spec"], after, old=before) == []) is allowed


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("specRef", "name"), "other-spec"),
        (("generator", "model"), "gpt-4o"),
        (("maxAttempts",), 5),
        (("budgetRef", "name"), "other"),
    ],
)
def test_rule_run_spec_is_immutable_except_suspend(path: tuple[str, ...], value: Any) -> None:
    before = example("generationrun-llm.yaml")
    after = copy.deepcopy(before)
    node = after["spec"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert cel_violations(CRDS["GenerationRun"], after, old=before) == [
        f"spec.{path[0]} is immutable once the run exists; create a new run"
    ]
    suspended = copy.deepcopy(before)
    suspended["spec"]["suspend"] = True
    assert cel_violations(CRDS["GenerationRun"], suspended, old=before) == []


def test_rule_run_optional_field_cannot_be_added_later() -> None:
    before = example("generationrun-builtin.yaml")
    after = copy.deepcopy(before)
    after["spec"]["replayOf"] = {"name": "earlier-run"}
    assert cel_violations(CRDS["GenerationRun"], after, old=before) == [
        "spec.replayOf is immutable once the run exists; create a new run"
    ]
