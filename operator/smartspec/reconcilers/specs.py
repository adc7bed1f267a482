"""kopf handlers for `Spec`: parse → evaluate (pure) → snapshot (I/O) → status and Events.

Contract: specs/CORE-002-spec-registry.md.

Handlers stay thin: every decision is in `smartspec.logic.spec_registry`; this module only
moves data between kopf, the object store and the pure functions. The handler id is pinned
because kopf persists it in annotations on every Spec.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf

from smartspec.api.manifests import ManifestError, parse_manifest
from smartspec.api.v1alpha1 import GROUP, VERSION
from smartspec.api.v1alpha1.spec import (
    PLURAL,
    ConditionType,
    Finding,
    Reason,
    Severity,
    Spec,
    SpecStatus,
)
from smartspec.kube.events import EventRecorder
from smartspec.logic.conditions import set_condition
from smartspec.logic.events import EventRecord
from smartspec.logic.object_keys import spec_snapshot_key
from smartspec.logic.spec_lint import KnownSpec, known_spec
from smartspec.logic.spec_registry import (
    SnapshotOutcome,
    SpecEvaluation,
    evaluate_spec,
    events_for,
    next_status,
)
from smartspec.logic.status_patch import status_changes
from smartspec.observability import metrics
from smartspec.observability.logs import get_logger
from smartspec.reconcilers.scope import reconcile_scope
from smartspec.storage import ObjectStore, StorageError, StorageIntegrityError

HANDLER_ID = "spec-registry"
RECHECK_ID = "spec-registry-dependency-recheck"
INDEX_ID = "specs_by_name"
SNAPSHOT_RETRY_SECONDS = 15

log = get_logger(__name__)


@dataclass(frozen=True)
class SpecRegistryContext:
    """What the handlers need from the process: the store and the recheck period."""

    store: ObjectStore
    events: EventRecorder
    dependency_recheck_seconds: int


def register_spec_handlers(registry: kopf.OperatorRegistry, context: SpecRegistryContext) -> None:
    """Register the Spec handlers on an explicit registry (no import-time side effects)."""

    @kopf.index(GROUP, VERSION, PLURAL, id=INDEX_ID, registry=registry)
    def specs_by_name(
        *, namespace: str | None, name: str, spec: kopf.Spec, **_: Any
    ) -> dict[tuple[str | None, str], KnownSpec]:
        return {(namespace, name): known_spec(spec)}

    @kopf.on.resume(GROUP, VERSION, PLURAL, id=HANDLER_ID, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, id=HANDLER_ID, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, id=HANDLER_ID, registry=registry)
    async def reconcile(*, body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        known = _known_specs(body, kwargs[INDEX_ID])
        await reconcile_spec(body, patch, known, context)

    @kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        id=RECHECK_ID,
        interval=context.dependency_recheck_seconds,
        when=_waits_for_dependency,
        registry=registry,
    )
    async def recheck(*, body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        known = _known_specs(body, kwargs[INDEX_ID])
        await reconcile_spec(body, patch, known, context)


def _known_specs(body: kopf.Body, index: kopf.Index[Any, KnownSpec]) -> dict[str, KnownSpec]:
    """Other Specs of the same namespace, by name, from kopf's in-memory index."""
    namespace = body.metadata.namespace
    known: dict[str, KnownSpec] = {}
    for key in index:
        key_namespace, key_name = key
        if key_namespace == namespace:
            for value in index[key]:
                known[key_name] = value
    return known


def _waits_for_dependency(*, status: kopf.Status, **_: Any) -> bool:
    conditions = status.get("conditions") or []
    return any(
        c.get("type") == ConditionType.VALID and c.get("reason") == Reason.DEPENDENCY_MISSING
        for c in conditions
    )


async def reconcile_spec(
    body: kopf.Body,
    patch: kopf.Patch,
    known_specs: Mapping[str, KnownSpec],
    context: SpecRegistryContext,
) -> None:
    """One reconcile of one Spec: the whole flow, written to `patch` and Events."""
    with reconcile_scope("Spec", body, "spec"):
        await _reconcile(body, patch, known_specs, context)


async def _reconcile(
    body: kopf.Body,
    patch: kopf.Patch,
    known_specs: Mapping[str, KnownSpec],
    context: SpecRegistryContext,
) -> None:
    now = datetime.now(UTC)
    # Every reconcile re-evaluates the whole Spec, so its Events are reported once per
    # content the Spec holds, not once per reconcile.
    state = f"generation {body.get('metadata', {}).get('generation')}"
    try:
        resource = parse_manifest(body, "Spec")
    except ManifestError as error:
        # The API server validated the same schema, so this is a model-only rule (such as an
        # unknown time zone): report it, do not retry until the object changes.
        message = _write_unparseable(body, patch, error, now)
        warning = EventRecord("Warning", Reason.LINT_FAILED.value, message)
        await context.events.record(body, warning, transition=state)
        return
    assert isinstance(resource, Spec)  # noqa: S101 (parse_manifest dispatches on kind)

    evaluation = evaluate_spec(resource, known_specs)
    snapshot = await _store_snapshot(resource, evaluation, context.store)
    status = next_status(resource, evaluation, snapshot, now)
    _write_status(patch, resource.status, status)
    _record(evaluation)
    for event in events_for(evaluation, snapshot):
        await context.events.record(body, event, transition=f"{state} {evaluation.content_hash}")
    if snapshot.error is not None:
        raise kopf.TemporaryError(snapshot.error, delay=SNAPSHOT_RETRY_SECONDS)


async def _store_snapshot(
    spec: Spec, evaluation: SpecEvaluation, store: ObjectStore
) -> SnapshotOutcome:
    if not evaluation.needs_snapshot:
        return SnapshotOutcome()
    namespace = spec.metadata.namespace or "default"
    key = spec_snapshot_key(namespace, evaluation.content_hash)
    try:
        created = await asyncio.to_thread(
            store.put_if_absent, key, evaluation.canonical_content, "application/json"
        )
    except StorageIntegrityError as error:
        metrics.SNAPSHOT_WRITES.labels(result="failed").inc()
        log.error("Snapshot integrity check failed", key=key, error=str(error))
        raise kopf.PermanentError(str(error)) from error
    except StorageError as error:
        metrics.SNAPSHOT_WRITES.labels(result="failed").inc()
        log.warning("Snapshot write failed; will retry", key=key, error=str(error))
        return SnapshotOutcome(error=f"snapshot write failed: {error}")
    metrics.SNAPSHOT_WRITES.labels(result="created" if created else "existed").inc()
    log.info("Stored snapshot" if created else "Snapshot already stored", uri=store.uri(key))
    return SnapshotOutcome(uri=store.uri(key), created=created)


def _write_status(patch: kopf.Patch, before: SpecStatus | None, after: SpecStatus) -> None:
    """Merge-patch only what changed; keys that disappeared are removed explicitly."""
    old = before.to_wire() if before is not None else {}
    for key, value in status_changes(old, after.to_wire()).items():
        patch.status[key] = value


def _write_unparseable(
    body: kopf.Body, patch: kopf.Patch, error: ManifestError, now: datetime
) -> str:
    """Report a Spec the model refuses in its status; returns the message."""
    previous = SpecStatus.model_validate(body.get("status") or {}) if body.get("status") else None
    generation = body.get("metadata", {}).get("generation")
    findings = [
        Finding(severity=Severity.ERROR, code="SchemaViolation", path="spec", message=problem)
        for problem in error.problems
    ]
    conditions = previous.conditions if previous is not None else []
    message = "; ".join(error.problems)
    conditions = set_condition(
        conditions,
        condition_type=ConditionType.VALID,
        status="False",
        reason=Reason.LINT_FAILED,
        message=message,
        observed_generation=generation,
        now=now,
    )
    conditions = set_condition(
        conditions,
        condition_type=ConditionType.READY,
        status="False",
        reason=Reason.INVALID,
        message="the Spec is not Valid; runs cannot use it",
        observed_generation=generation,
        now=now,
    )
    status = (previous or SpecStatus()).model_copy(
        update={"observed_generation": generation, "findings": findings, "conditions": conditions}
    )
    _write_status(patch, previous, status)
    log.warning("Spec does not parse", problems=error.problems)
    return message


def _record(evaluation: SpecEvaluation) -> None:
    """Logs and metrics for what happened; never any matched secret text."""
    if evaluation.is_new_revision:
        metrics.SPEC_REVISIONS.inc()
        log.info(
            "Observed revision", revision=evaluation.revision, content_hash=evaluation.content_hash
        )
    for finding in evaluation.findings:
        metrics.SPEC_FINDINGS.labels(severity=finding.severity.value, code=finding.code).inc()
    if evaluation.findings:
        log.info(
            "Lint findings",
            valid=evaluation.valid,
            findings=[f"{f.severity.value} {f.code} at {f.path}" for f in evaluation.findings],
        )


__all__ = [
    "HANDLER_ID",
    "SpecRegistryContext",
    "reconcile_spec",
    "register_spec_handlers",
]
