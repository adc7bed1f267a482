"""parse_manifest reads a manifest as the API server does (CORE-001 "Validation"): JSON types
exactly, a declared field set to null is left out, an unknown one is refused even when null;
and a budget the API server admits but the types refuse gets a Ready=False reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.api.manifests import ManifestError, parse_manifest
from smartspec.api.v1alpha1 import CreditBudget, GenerationRun, Spec
from smartspec.logic.budget import TIME_ZONE_FIELD, invalid_budget_condition

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "todo-service"


def example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLE / name).read_text())
    return document


@pytest.mark.parametrize(("value", "field"), [(0, "allowDraft"), ("3", "maxAttempts")])
def test_values_the_api_server_would_refuse_are_not_coerced(value: object, field: str) -> None:
    run = example("generationrun-builtin.yaml")
    run["spec"][field] = value
    with pytest.raises(ManifestError) as raised:
        parse_manifest(run)
    assert f"spec.{field}" in raised.value.fields


def test_a_declared_field_set_to_null_is_left_out() -> None:
    budget = example("creditbudget.yaml")
    budget["spec"]["enforcement"] = None
    parsed = parse_manifest(budget)
    assert isinstance(parsed, CreditBudget)
    assert parsed.spec.enforcement.value == "Enforce"  # the default, as if left out


def test_a_null_inside_a_list_item_is_left_out_too() -> None:
    spec = example("spec.yaml")
    spec["spec"]["requirements"][0]["priority"] = None
    parsed = parse_manifest(spec)
    assert isinstance(parsed, Spec)
    assert parsed.spec.requirements[0].priority.value == "Must"


def test_a_null_generator_setting_is_left_out() -> None:
    run = example("generationrun-llm.yaml")
    run["spec"]["generator"]["temperatureMilli"] = None
    parsed = parse_manifest(run)
    assert isinstance(parsed, GenerationRun)
    assert parsed.spec.generator.temperature_milli == 0


def test_an_unknown_field_is_refused_even_when_null() -> None:
    budget = example("creditbudget.yaml")
    budget["spec"]["unexpected"] = None
    with pytest.raises(ManifestError) as raised:
        parse_manifest(budget)
    assert raised.value.fields == frozenset({"spec.unexpected"})


def test_an_unknown_time_zone_makes_the_budget_not_ready_with_its_own_reason() -> None:
    budget = example("creditbudget.yaml")
    budget["spec"]["period"] = {"type": "Daily", "timeZone": "Mars/Olympus"}
    with pytest.raises(ManifestError) as raised:
        parse_manifest(budget)
    assert raised.value.fields == frozenset({TIME_ZONE_FIELD})
    condition = invalid_budget_condition(raised.value.fields, raised.value.problems)
    assert condition == (
        "Ready",
        "False",
        "InvalidTimeZone",
        "spec.period.timeZone: unknown IANA time zone 'Mars/Olympus'",
    )
    assert invalid_budget_condition(frozenset({"spec.x"}), ["spec.x: bad"])[2] == "Invalid"
