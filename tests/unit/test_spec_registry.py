"""Spec registry decisions: lint, revisions, snapshots, conditions (CORE-002)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.api.v1alpha1.spec import Lifecycle, Spec, SpecStatus
from smartspec.logic.canonical import canonical_json, content_hash
from smartspec.logic.conditions import find_condition
from smartspec.logic.spec_lint import MAX_CONTENT_BYTES, KnownSpec, known_spec, lint_spec
from smartspec.logic.spec_registry import (
    SnapshotOutcome,
    evaluate_spec,
    events_for,
    next_status,
    status_changed,
)

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
FAKE_KEY = "AKIA" + "IOSFODNN7EXAMPLE"


def example() -> dict[str, Any]:
    document = yaml.safe_load((REPO / "examples/todo-service/spec.yaml").read_text())
    document["metadata"].update(namespace="team-a", uid="u-1", generation=1)
    assert isinstance(document, dict)
    return document


def spec_of(document: dict[str, Any]) -> Spec:
    return Spec.model_validate(document)


def reconcile(
    document: dict[str, Any], uri: str | None = "s3://b/k", now: datetime = NOW
) -> SpecStatus:
    """One pass: evaluate, pretend the snapshot step returned `uri`, fold the status."""
    spec = spec_of(document)
    evaluation = evaluate_spec(spec, {})
    outcome = (
        SnapshotOutcome(uri=uri, created=True) if evaluation.needs_snapshot else SnapshotOutcome()
    )
    status = next_status(spec, evaluation, outcome, now)
    document["status"] = status.to_wire()
    return status


def codes(document: dict[str, Any], known: dict[str, KnownSpec] | None = None) -> list[str]:
    spec = spec_of(document)
    return [finding.code for finding in lint_spec(spec.metadata.name, spec.spec, known or {})]


def test_example_lints_clean() -> None:
    assert codes(example()) == []


def test_first_reconcile_is_revision_one_ready_with_snapshot() -> None:
    document = example()
    status = reconcile(document)
    assert status.revision == 1
    assert status.content_hash == content_hash(spec_of(document).spec.content())
    assert status.snapshot_uri == "s3://b/k"
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None
    assert (ready.status, ready.reason) == ("True", "SnapshotStored")
    assert [entry.revision for entry in status.history] == [1]


def test_snapshot_bytes_are_the_canonical_content() -> None:
    spec = spec_of(example())
    evaluation = evaluate_spec(spec, {})
    assert evaluation.canonical_content == canonical_json(spec.spec.content())


def test_metadata_and_lifecycle_changes_keep_the_revision_and_need_no_snapshot() -> None:
    document = example()
    first = reconcile(document)
    document["metadata"]["labels"] = {"team": "x"}
    document["spec"]["lifecycle"] = "Approved"
    document["metadata"]["generation"] = 2
    evaluation = evaluate_spec(spec_of(document), {})
    assert not evaluation.is_new_revision
    assert not evaluation.needs_snapshot
    second = next_status(spec_of(document), evaluation, SnapshotOutcome(), NOW)
    assert (second.revision, second.content_hash) == (first.revision, first.content_hash)
    assert second.approved_revision == 1
    assert second.snapshot_uri == first.snapshot_uri


def test_content_change_bumps_revision_and_keeps_history() -> None:
    document = example()
    reconcile(document)
    document["spec"]["summary"] = "Changed."
    status = reconcile(document, uri="s3://b/k2", now=NOW + timedelta(minutes=1))
    assert status.revision == 2
    assert [(e.revision, e.snapshot_uri) for e in status.history] == [
        (1, "s3://b/k"),
        (2, "s3://b/k2"),
    ]


def test_rerun_after_a_crash_before_the_status_write_converges() -> None:
    document = example()
    reconcile(document)
    document["spec"]["summary"] = "Changed."
    # The first attempt stored the snapshot and died; the status still says revision 1.
    retried = reconcile(document, uri="s3://b/k2")
    again = evaluate_spec(spec_of(document), {})
    assert retried.revision == 2
    assert not again.is_new_revision
    assert not again.needs_snapshot


def test_unchanged_status_is_not_rewritten() -> None:
    document = example()
    first = reconcile(document)
    evaluation = evaluate_spec(spec_of(document), {})
    second = next_status(spec_of(document), evaluation, SnapshotOutcome(), NOW + timedelta(hours=1))
    assert not status_changed(first, second)


def test_secret_makes_the_spec_invalid_without_echoing_it() -> None:
    document = example()
    document["spec"]["requirements"][1]["text"] = f"Use the key {FAKE_KEY} to list items."
    spec = spec_of(document)
    evaluation = evaluate_spec(spec, {})
    assert not evaluation.valid
    assert not evaluation.needs_snapshot
    status = next_status(spec, evaluation, SnapshotOutcome(), NOW)
    valid = find_condition(status.conditions, "Valid")
    ready = find_condition(status.conditions, "Ready")
    assert valid is not None
    assert (valid.status, valid.reason) == ("False", "SecretDetected")
    assert ready is not None
    assert (ready.status, ready.reason) == ("False", "Invalid")
    assert status.findings[0].path == "spec.requirements[1].text"
    assert status.snapshot_uri is None
    rendered = repr(status.to_wire()) + repr(events_for(evaluation, SnapshotOutcome()))
    assert FAKE_KEY not in rendered


def test_snapshot_failure_is_not_ready_and_retried() -> None:
    spec = spec_of(example())
    evaluation = evaluate_spec(spec, {})
    status = next_status(
        spec, evaluation, SnapshotOutcome(error="snapshot write failed: boom"), NOW
    )
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None
    assert (ready.status, ready.reason) == ("False", "SnapshotFailed")
    assert "boom" in ready.message
    assert status.history[-1].snapshot_uri is None


def test_deprecated_spec_is_not_ready() -> None:
    document = example()
    document["spec"]["lifecycle"] = "Deprecated"
    status = reconcile(document)
    ready = find_condition(status.conditions, "Ready")
    assert ready is not None
    assert (ready.status, ready.reason) == ("False", "Deprecated")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda s: s["interfaces"]["endpoints"][0]["requirements"].append("REQ-999"),
            "UnknownRequirement",
        ),
        (lambda s: s["interfaces"]["endpoints"][2].update(path="/todos"), "PathParameterMissing"),
        (
            lambda s: s["interfaces"]["endpoints"][0].update(path="/todos/{id}"),
            "PathParameterUnexpected",
        ),
        (
            lambda s: s["interfaces"]["endpoints"][1].update(method="PUT", path="/todos/new"),
            "MethodActionMismatch",
        ),
        (
            lambda s: s["requirements"][0]["acceptanceCriteria"].append(
                s["requirements"][0]["acceptanceCriteria"][0].upper()
            ),
            "DuplicateCriterion",
        ),
        (lambda s: s.update(dependsOn=[{"name": "todo-api"}]), "SelfDependency"),
        (lambda s: s.update(dependsOn=[{"name": "auth-api"}]), "MissingDependency"),
        (
            lambda s: s.update(dependsOn=[{"name": "users-api", "minVersion": "2.0.0"}]),
            "DependencyTooOld",
        ),
        (lambda s: s.update(dependsOn=[{"name": "old-api"}]), "DependencyDeprecated"),
        (
            lambda s: s.update(
                requirements=[
                    {"id": f"REQ-{i}", "text": "x" * 3000, "acceptanceCriteria": ["y"]}
                    for i in range(MAX_CONTENT_BYTES // 3000 + 1)
                ]
            ),
            "ContentTooLarge",
        ),
    ],
)
def test_lint_findings(change: Any, expected: str) -> None:
    document = copy.deepcopy(example())
    change(document["spec"])
    known = {
        "users-api": KnownSpec(version="1.9.3", lifecycle=Lifecycle.APPROVED),
        "old-api": KnownSpec(version="1.0.0", lifecycle=Lifecycle.DEPRECATED),
    }
    assert expected in codes(document, known)


def test_missing_dependency_has_its_own_reason_and_clears_when_it_appears() -> None:
    document = example()
    document["spec"]["dependsOn"] = [{"name": "auth-api", "minVersion": "1.0.0"}]
    evaluation = evaluate_spec(spec_of(document), {})
    assert (evaluation.valid, evaluation.valid_reason) == (False, "DependencyMissing")
    known = {"auth-api": KnownSpec(version="1.2.0", lifecycle=Lifecycle.APPROVED)}
    assert evaluate_spec(spec_of(document), known).valid


def test_warnings_do_not_invalidate() -> None:
    document = example()
    document["spec"]["interfaces"]["endpoints"][1].update(method="PUT", path="/todos/new")
    evaluation = evaluate_spec(spec_of(document), {})
    assert evaluation.valid
    assert "1 warning" in evaluation.valid_message


def test_history_is_bounded() -> None:
    document = example()
    for index in range(25):
        document["spec"]["summary"] = f"version {index}"
        status = reconcile(document, uri=f"s3://b/{index}")
    assert len(status.history) == 20
    assert status.history[-1].revision == 25


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"version": "1.2.0", "lifecycle": "Approved"}, KnownSpec("1.2.0", Lifecycle.APPROVED)),
        ({"version": "1.2.0"}, KnownSpec("1.2.0", Lifecycle.DRAFT)),
        ({"lifecycle": "Bogus"}, KnownSpec("", Lifecycle.DRAFT)),
    ],
)
def test_known_spec_reads_raw_specs_tolerantly(raw: dict[str, Any], expected: KnownSpec) -> None:
    assert known_spec(raw) == expected
