"""The Spec registry's decisions, as pure functions of (Spec, other Specs, snapshot outcome).

Contract: specs/CORE-002-spec-registry.md, section "Behaviour".

A reconcile is two steps around one I/O call:
1. `evaluate_spec` lints the content, hashes it and decides the revision and whether a
   snapshot must be written (only valid content is ever snapshotted: a Spec holding a
   credential must not copy it into S3).
2. the reconciler writes the snapshot if asked (write-once, content-addressed);
3. `next_status` folds the outcome into the complete next status.
Restart safety follows from this shape: the status write is the commit point, the snapshot
write is idempotent, so a reconcile interrupted anywhere and run again converges to the
same revision and writes no second snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from smartspec.api.v1alpha1.common import ConditionStatus
from smartspec.api.v1alpha1.spec import (
    MAX_FINDINGS,
    MAX_HISTORY,
    ConditionType,
    Finding,
    Lifecycle,
    Reason,
    Severity,
    Spec,
    SpecRevision,
    SpecStatus,
)
from smartspec.logic.canonical import canonical_json, content_hash
from smartspec.logic.conditions import set_condition
from smartspec.logic.events import EventRecord
from smartspec.logic.spec_lint import (
    MISSING_DEPENDENCY,
    SECRET_DETECTED,
    KnownSpec,
    has_errors,
    lint_spec,
)


@dataclass(frozen=True)
class SpecEvaluation:
    """What one reconcile decided before any I/O."""

    content_hash: str
    canonical_content: bytes
    revision: int
    is_new_revision: bool
    findings: list[Finding]
    valid: bool
    valid_reason: Reason
    valid_message: str
    snapshot_recorded: bool

    @property
    def needs_snapshot(self) -> bool:
        """Only valid content is snapshotted, and only until its URI is in status."""
        return self.valid and not self.snapshot_recorded


@dataclass(frozen=True)
class SnapshotOutcome:
    """The result of the snapshot step: a URI, or why there is none."""

    uri: str | None = None
    created: bool = False
    error: str | None = None


def evaluate_spec(spec: Spec, known_specs: Mapping[str, KnownSpec]) -> SpecEvaluation:
    """Lint, hash and number the Spec's current content."""
    status = spec.status or SpecStatus()
    content = spec.spec.content()
    digest = content_hash(content)
    is_new = digest != status.content_hash
    revision = (status.revision or 0) + 1 if is_new else (status.revision or 1)
    findings = lint_spec(spec.metadata.name, spec.spec, known_specs)
    valid = not has_errors(findings)
    reason, message = _validity(findings)
    return SpecEvaluation(
        content_hash=digest,
        canonical_content=canonical_json(content),
        revision=revision,
        is_new_revision=is_new,
        findings=findings,
        valid=valid,
        valid_reason=reason,
        valid_message=message,
        snapshot_recorded=not is_new and status.snapshot_uri is not None,
    )


def _validity(findings: list[Finding]) -> tuple[Reason, str]:
    errors = [finding for finding in findings if finding.severity is Severity.ERROR]
    warnings = len(findings) - len(errors)
    if not errors:
        suffix = f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
        return Reason.LINT_PASSED, f"schema, lint and secret scan passed{suffix}"
    codes = {finding.code for finding in errors}
    if SECRET_DETECTED in codes:
        # Where, never what: the paths are safe to show, the matched text is not.
        paths = ", ".join(f.path for f in errors if f.code == SECRET_DETECTED)
        return Reason.SECRET_DETECTED, f"possible credential in {paths}; see status.findings"
    if codes == {MISSING_DEPENDENCY}:
        paths = ", ".join(f.path for f in errors)
        return Reason.DEPENDENCY_MISSING, f"missing Specs named at {paths}; see status.findings"
    first = errors[0]
    more = f" and {len(errors) - 1} more" if len(errors) > 1 else ""
    return Reason.LINT_FAILED, f"{first.path}: {first.message}{more}; see status.findings"


def next_status(
    spec: Spec,
    evaluation: SpecEvaluation,
    snapshot: SnapshotOutcome,
    now: datetime,
) -> SpecStatus:
    """The complete status after this reconcile (the reconciler writes it only if changed)."""
    previous = spec.status or SpecStatus()
    generation = spec.metadata.generation
    history = _updated_history(previous.history, evaluation, snapshot, now)
    current = history[-1] if history and history[-1].revision == evaluation.revision else None
    snapshot_uri = current.snapshot_uri if current is not None else None

    conditions = set_condition(
        previous.conditions,
        condition_type=ConditionType.VALID,
        status="True" if evaluation.valid else "False",
        reason=evaluation.valid_reason,
        message=evaluation.valid_message,
        observed_generation=generation,
        now=now,
    )
    ready_status, ready_reason, ready_message = _readiness(spec, evaluation, snapshot_uri, snapshot)
    conditions = set_condition(
        conditions,
        condition_type=ConditionType.READY,
        status=ready_status,
        reason=ready_reason,
        message=ready_message,
        observed_generation=generation,
        now=now,
    )
    approved_revision = previous.approved_revision
    if spec.spec.lifecycle is Lifecycle.APPROVED and approved_revision is None:
        approved_revision = evaluation.revision
    return SpecStatus(
        observed_generation=generation,
        revision=evaluation.revision,
        content_hash=evaluation.content_hash,
        snapshot_uri=snapshot_uri,
        approved_revision=approved_revision,
        history=history,
        findings=evaluation.findings[:MAX_FINDINGS],
        conditions=conditions,
    )


def _readiness(
    spec: Spec, evaluation: SpecEvaluation, snapshot_uri: str | None, snapshot: SnapshotOutcome
) -> tuple[ConditionStatus, Reason, str]:
    if not evaluation.valid:
        return "False", Reason.INVALID, "the Spec is not Valid; runs cannot use it"
    if snapshot_uri is None:
        detail = snapshot.error or "the snapshot has not been stored yet"
        return "False", Reason.SNAPSHOT_FAILED, f"revision {evaluation.revision}: {detail}"
    if spec.spec.lifecycle is Lifecycle.DEPRECATED:
        return "False", Reason.DEPRECATED, "the Spec is Deprecated and accepts no new runs"
    return (
        "True",
        Reason.SNAPSHOT_STORED,
        f"revision {evaluation.revision} stored at {snapshot_uri}",
    )


def _updated_history(
    history: list[SpecRevision],
    evaluation: SpecEvaluation,
    snapshot: SnapshotOutcome,
    now: datetime,
) -> list[SpecRevision]:
    entries = list(history)
    if evaluation.is_new_revision or not entries:
        entries.append(
            SpecRevision(
                revision=evaluation.revision,
                content_hash=evaluation.content_hash,
                snapshot_uri=snapshot.uri,
                observed_at=now,
            )
        )
    elif snapshot.uri is not None and entries[-1].snapshot_uri is None:
        entries[-1] = entries[-1].model_copy(update={"snapshot_uri": snapshot.uri})
    return entries[-MAX_HISTORY:]


def status_changed(before: SpecStatus | None, after: SpecStatus) -> bool:
    """Whether a status write is needed (cert-manager style: write only if changed)."""
    return before is None or before.to_wire() != after.to_wire()


def events_for(evaluation: SpecEvaluation, snapshot: SnapshotOutcome) -> list[EventRecord]:
    """The Events describing what this reconcile did."""
    events: list[EventRecord] = []
    if evaluation.is_new_revision:
        events.append(
            EventRecord(
                "Normal",
                "RevisionObserved",
                f"revision {evaluation.revision}: {evaluation.content_hash}",
            )
        )
    if not evaluation.valid:
        events.append(
            EventRecord("Warning", evaluation.valid_reason.value, evaluation.valid_message)
        )
    if snapshot.created and snapshot.uri is not None:
        stored = f"stored {snapshot.uri}"
        events.append(EventRecord("Normal", Reason.SNAPSHOT_STORED.value, stored))
    if snapshot.error is not None:
        events.append(EventRecord("Warning", Reason.SNAPSHOT_FAILED.value, snapshot.error))
    return events
