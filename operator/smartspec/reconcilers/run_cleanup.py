"""Deleting a GenerationRun's stored files: the run finalizer, and what retention shares.

Contract: specs/CORE-001-resources.md, section "Retention".

A pinned run holds the `smartspec.dev/artifacts` finalizer. When the run is deleted (by a
user, by retention, by its namespace going away) the finalizer deletes everything under
`<ns>/runs/<run>/<uid>/` but the attestation, then lets the run go. A failure retries with
backoff (5 s doubling to 5 min), set as the run's ArtifactsDeleted=False `DeleteFailed`
condition with one Warning Event; the admin's `smartspec.dev/force-finalizer-removal: "true"`
or the finalizer's deadline lets the run go at once with files left, reported as
`Abandoned`, and the retention sweep deletes them once the store answers (they belong to
no run then). Deletion never waits on the store forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from smartspec.api.v1alpha1 import GROUP, VERSION
from smartspec.api.v1alpha1.common import ConditionStatus
from smartspec.api.v1alpha1.generationrun import (
    PLURAL,
    ConditionType,
    GenerationRunStatus,
    Reason,
)
from smartspec.kube.client import ConflictError, KubeClient, KubeError, NotFoundError
from smartspec.kube.events import EventRecorder
from smartspec.logic.conditions import find_condition, set_condition
from smartspec.logic.events import EventRecord
from smartspec.logic.object_keys import run_prefix
from smartspec.logic.retention import (
    FINALIZER,
    FORCE_ANNOTATION,
    deletable,
    finalizer_backoff,
    finalizer_gives_up,
)
from smartspec.observability import metrics
from smartspec.observability.logs import get_logger
from smartspec.storage import StorageError
from smartspec.storage.objects import S3ObjectStore

__all__ = ["Deleted", "RunCleanup", "delete_run_files", "holds_finalizer", "run_path"]

API = f"/apis/{GROUP}/{VERSION}"
log = get_logger(__name__)


@dataclass(frozen=True)
class Deleted:
    """What one deletion removed."""

    objects: int
    bytes: int


def run_path(namespace: str, name: str) -> str:
    return f"{API}/namespaces/{namespace}/{PLURAL}/{name}"


def holds_finalizer(metadata: Mapping[str, Any]) -> bool:
    return FINALIZER in (metadata.get("finalizers") or [])


async def delete_run_files(store: S3ObjectStore, metadata: Mapping[str, Any]) -> Deleted:
    """Delete a run's files (all but its attestation), off the event loop."""
    prefix = run_prefix(metadata["namespace"], metadata["name"], metadata["uid"])

    def delete() -> Deleted:
        objects = deletable(store.list_objects(prefix))
        store.delete_objects([o.key for o in objects])
        return Deleted(len(objects), sum(o.size for o in objects))

    return await asyncio.to_thread(delete)


@dataclass
class RunCleanup:
    """The finalizer's side of the run reconciler."""

    kube: KubeClient
    events: EventRecorder
    store: S3ObjectStore
    timeout_seconds: int
    _failures: dict[str, int] = field(default_factory=dict)
    """run uid -> failed tries, for the backoff."""

    async def finalize(self, body: Mapping[str, Any]) -> float | None:
        """One try at a deleted run; when to try again, or None when it is let go."""
        metadata = body["metadata"]
        if not holds_finalizer(metadata):
            return None
        uid = metadata["uid"]
        now = datetime.now(UTC)
        requested = datetime.fromisoformat(metadata["deletionTimestamp"])
        forced = (metadata.get("annotations") or {}).get(FORCE_ANNOTATION) == "true"
        if forced:
            return await self._let_go(body, "forced", f"{FORCE_ANNOTATION} is set")
        try:
            deleted = await delete_run_files(self.store, metadata)
        except StorageError as error:
            failures = self._failures.get(uid, 0) + 1
            self._failures[uid] = failures
            metrics.RETENTION_FAILURES.labels(stage="finalizer").inc()
            if finalizer_gives_up(requested, now, self.timeout_seconds, forced=False):
                why = f"its files were not deleted within {self.timeout_seconds} s: {error}"
                return await self._let_go(body, "deadline", why)
            delay = finalizer_backoff(failures)
            log.warning("Run files not deleted", error=str(error), retry_seconds=delay)
            await self._report(body, "False", Reason.DELETE_FAILED, f"{error}; retrying")
            return delay
        metrics.RETENTION_OBJECTS_DELETED.labels(kind="run").inc(deleted.objects)
        metrics.RETENTION_BYTES_DELETED.labels(kind="run").inc(deleted.bytes)
        log.info("Run files deleted", objects=deleted.objects, bytes=deleted.bytes)
        return await self._release(body)

    async def _let_go(self, body: Mapping[str, Any], why: str, message: str) -> float | None:
        text = f"let go with files left ({message}); the retention sweep deletes them later"
        version = await self._report(body, "False", Reason.ABANDONED, text)
        later = await self._release(body, version)
        if later is None:
            metrics.RETENTION_ABANDONED.labels(why=why).inc()
            log.warning("Run let go with files left", why=why, detail=message)
        return later

    async def _release(self, body: Mapping[str, Any], version: str | None = None) -> float | None:
        """Remove our finalizer only (others stay), conditional on the version read (or
        the one our own status write made)."""
        metadata = body["metadata"]
        kept = [f for f in metadata.get("finalizers") or [] if f != FINALIZER]
        precondition = version or metadata["resourceVersion"]
        patch = {"metadata": {"finalizers": kept, "resourceVersion": precondition}}
        try:
            await self.kube.merge_patch(run_path(metadata["namespace"], metadata["name"]), patch)
        except NotFoundError:
            pass
        except ConflictError:
            return 0.0  # changed meanwhile: read it again
        self._failures.pop(metadata["uid"], None)
        return None

    async def _report(
        self, body: Mapping[str, Any], status: ConditionStatus, reason: Reason, message: str
    ) -> str | None:
        """The ArtifactsDeleted condition and one Warning Event per reason; the
        resourceVersion the status write made. Best effort: in a namespace being deleted no
        Event can be created, and a lost report must not stop the deletion it reports."""
        metadata = body["metadata"]
        try:
            conditions = GenerationRunStatus.model_validate(body.get("status") or {}).conditions
        except ValidationError:
            conditions = []
        current = find_condition(conditions, ConditionType.ARTIFACTS_DELETED)
        if current is not None and (current.status, current.reason) == (status, reason):
            # Reported already: another write would wake this run again before its backoff.
            return None
        wanted = set_condition(
            conditions,
            condition_type=ConditionType.ARTIFACTS_DELETED,
            status=status,
            reason=reason,
            message=message[:1000],
            observed_generation=metadata.get("generation"),
            now=datetime.now(UTC),
        )
        path = run_path(metadata["namespace"], metadata["name"]) + "/status"
        version = None
        try:
            answer = await self.kube.merge_patch(
                path, {"status": {"conditions": [c.to_wire() for c in wanted]}}
            )
            version = str((answer.get("metadata") or {}).get("resourceVersion") or "") or None
        except KubeError as error:
            log.warning("Could not set ArtifactsDeleted", error=str(error))
        await self.events.record(
            body, EventRecord("Warning", reason, message[:1000]), transition=f"cleanup:{reason}"
        )
        return version
