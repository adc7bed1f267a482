"""The resource types accept every example and refuse bad input naming the field.

Contract: specs/CORE-001-resources.md.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.api.manifests import ManifestError, parse_manifest
from smartspec.api.v1alpha1 import CreditBudget, GenerationRun, Spec
from smartspec.api.v1alpha1.spec import CONTENT_FIELDS, SpecSpec

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_FILES = sorted((REPO / "examples").rglob("*.yaml"))


def load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((REPO / "examples" / "todo-service" / name).read_text())
    assert isinstance(document, dict)
    return document


def smartspec_documents() -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in EXAMPLE_FILES:
        for index, document in enumerate(yaml.safe_load_all(path.read_text())):
            if document and str(document.get("apiVersion", "")).startswith("smartspec.dev/"):
                documents.append((f"{path.relative_to(REPO)}#{index}", document))
    return documents


def test_examples_cover_every_kind() -> None:
    kinds = {document["kind"] for _, document in smartspec_documents()}
    assert kinds == {"Spec", "GenerationRun", "CreditBudget"}


@pytest.mark.parametrize(("source", "document"), smartspec_documents(), ids=lambda v: str(v)[:60])
def test_every_example_validates_and_round_trips(source: str, document: dict[str, Any]) -> None:
    resource = parse_manifest(document, source)
    wire = resource.to_wire()
    again = parse_manifest(wire, source)
    assert again == resource
    # Nothing the author wrote is lost on the way through the model.
    assert _is_subset(document["spec"], wire["spec"]), source


def _is_subset(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            key in actual and _is_subset(value, actual[key]) for key, value in expected.items()
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(_is_subset(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return bool(expected == actual)


def mutate(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy with the dotted path set to value (or removed when value is DELETE)."""
    result = copy.deepcopy(document)
    node: Any = result
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return result


DELETE = object()

INVALID_CASES = [
    # (file, path, value, text expected in the error, naming the field)
    ("spec.yaml", "spec.title", DELETE, "spec.title: Field required"),
    ("spec.yaml", "spec.owner", DELETE, "spec.owner: Field required"),
    ("spec.yaml", "spec.lifecycle", "Final", "spec.lifecycle: Input should be 'Draft'"),
    ("spec.yaml", "spec.version", "one", "spec.version: String should match pattern"),
    ("spec.yaml", "spec.requirements", [], "spec.requirements: List should have at least 1"),
    (
        "spec.yaml",
        "spec.requirements.0.acceptanceCriteria",
        [],
        "spec.requirements[0].acceptanceCriteria: List should have at least 1",
    ),
    (
        "spec.yaml",
        "spec.requirements.1.id",
        "REQ-001",
        "requirements[1].id 'REQ-001' is duplicated",
    ),
    ("spec.yaml", "spec.requirements.0.priority", "High", "spec.requirements[0].priority"),
    (
        "spec.yaml",
        "spec.interfaces.endpoints.0.entity",
        "Ghost",
        "spec.interfaces: endpoints[0].entity 'Ghost' is not declared",
    ),
    (
        "spec.yaml",
        "spec.interfaces.entities.0.fields.0.type",
        "float",
        "spec.interfaces.entities[0].fields[0].type",
    ),
    ("spec.yaml", "spec.colour", "blue", "spec.colour: Extra inputs are not permitted"),
    (
        "creditbudget.yaml",
        "spec.limitCredits",
        1.5,
        "spec.limitCredits: Input should be a valid integer",
    ),
    (
        "creditbudget.yaml",
        "spec.limitCredits",
        100.0,
        "spec.limitCredits: Input should be a valid integer",
    ),
    (
        "creditbudget.yaml",
        "spec.limitCredits",
        "100",
        "spec.limitCredits: Input should be a valid integer",
    ),
    (
        "creditbudget.yaml",
        "spec.limitCredits",
        -1,
        "spec.limitCredits: Input should be greater than or equal to 0",
    ),
    ("creditbudget.yaml", "spec.limitCredits", DELETE, "spec.limitCredits: Field required"),
    (
        "creditbudget.yaml",
        "spec.perRunLimitCredits",
        600000,
        "spec: perRunLimitCredits must not exceed limitCredits",
    ),
    (
        "creditbudget.yaml",
        "spec.period.type",
        "Hourly",
        "spec.period.type: Input should be 'Daily'",
    ),
    (
        "creditbudget.yaml",
        "spec.period.timeZone",
        "Mars/Olympus",
        "unknown IANA time zone 'Mars/Olympus'",
    ),
    (
        "creditbudget.yaml",
        "spec.enforcement",
        "Soft",
        "spec.enforcement: Input should be 'Enforce'",
    ),
    ("creditbudget.yaml", "spec.softThresholdsPercent", [80, 80], "must not repeat a value"),
    ("creditbudget.yaml", "spec.softThresholdsPercent", [120], "spec.softThresholdsPercent[0]"),
    (
        "generationrun-llm.yaml",
        "spec.maxCredits",
        20000.0,
        "spec.maxCredits: Input should be a valid integer",
    ),
    ("generationrun-llm.yaml", "spec.generator.model", DELETE, "generator.model is required"),
    (
        "generationrun-llm.yaml",
        "spec.generator.backend",
        "gpt",
        "spec.generator.backend: Input should be 'llm'",
    ),
    (
        "generationrun-llm.yaml",
        "spec.generator.temperatureMilli",
        0.2,
        "spec.generator.temperatureMilli",
    ),
    (
        "generationrun-llm.yaml",
        "spec.maxAttempts",
        0,
        "spec.maxAttempts: Input should be greater than or equal to 1",
    ),
    ("generationrun-llm.yaml", "spec.specRef", DELETE, "spec.specRef: Field required"),
    ("generationrun-llm.yaml", "spec.specRef.contentHash", "md5:abc", "spec.specRef.contentHash"),
    (
        "generationrun-llm.yaml",
        "spec.timeouts.attemptSeconds",
        6000,
        "spec.timeouts: timeouts.attemptSeconds must not exceed timeouts.totalSeconds",
    ),
    ("generationrun-llm.yaml", "spec.sandbox.generatorResources.limits.cpu", "lots", "limits.cpu"),
    ("generationrun-llm.yaml", "kind", "Generation", "kind: expected one of"),
    ("generationrun-llm.yaml", "apiVersion", "smartspec.dev/v1", "apiVersion: expected"),
]


@pytest.mark.parametrize(("file", "path", "value", "expected"), INVALID_CASES)
def test_invalid_input_is_refused_naming_the_field(
    file: str, path: str, value: Any, expected: str
) -> None:
    document = mutate(load(file), path, value)
    with pytest.raises(ManifestError) as caught:
        parse_manifest(document, file)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_parsed_example_exposes_snake_case_attributes() -> None:
    run = parse_manifest(load("generationrun-llm.yaml"), "run")
    assert isinstance(run, GenerationRun)
    assert run.spec.generator.temperature_milli == 200
    assert run.spec.budget_ref.name == "default"
    budget = parse_manifest(load("creditbudget.yaml"), "budget")
    assert isinstance(budget, CreditBudget)
    assert budget.spec.per_run_limit_credits == 50000


def test_defaults_fill_what_the_author_left_out() -> None:
    run = parse_manifest(load("generationrun-builtin.yaml"), "run")
    assert isinstance(run, GenerationRun)
    assert run.spec.budget_ref.name == "default"
    assert run.spec.generator.max_tokens == 4096
    assert run.spec.suspend is False


def test_spec_content_excludes_lifecycle_only() -> None:
    spec = parse_manifest(load("spec.yaml"), "spec")
    assert isinstance(spec, Spec)
    content = spec.spec.content()
    assert "lifecycle" not in content
    assert set(CONTENT_FIELDS) == {
        field.alias or name for name, field in SpecSpec.model_fields.items()
    } - {"lifecycle"}
    assert set(content) <= set(CONTENT_FIELDS)
