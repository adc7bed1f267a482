"""The retention sweep: finished runs, their files and transcripts past their lifetimes.

Contract: specs/CORE-001-resources.md, section "Retention".

Every `retentionSweepSeconds` the leader lists budgets and runs (paged), then per finished
run deletes the run (files first, then the object) or only its files, as its budget's
policy says (`smartspec.logic.retention`); per namespace it deletes transcripts past their
lifetime and files no run owns (a finalizer let go, or a sandbox that uploaded after its run
was deleted). Every step is retried by the next sweep when it fails; none blocks another.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from pydantic import ValidationError

from smartspec.api.v1alpha1 import GROUP, VERSION
from smartspec.api.v1alpha1.creditbudget import PLURAL as BUDGETS
from smartspec.api.v1alpha1.creditbudget import RetentionPolicy
from smartspec.api.v1alpha1.generationrun import (
    DEFAULT_BUDGET_NAME,
    PLURAL,
    ConditionType,
    GenerationRunStatus,
    Reason,
    Retention,
)
from smartspec.kube.client import KubeClient, KubeError, NotFoundError
from smartspec.kube.events import EventRecorder
from smartspec.logic.conditions import set_condition
from smartspec.logic.events import EventRecord
from smartspec.logic.object_keys import runs_prefix, transcripts_prefix
from smartspec.logic.retention import (
    Action,
    FinishedRun,
    Lifetimes,
    StoredObject,
    exemption,
    lifetimes,
    namespace_transcript_lifetime,
    orphans,
    run_action,
    transcript_due,
)
from smartspec.observability import metrics
from smartspec.observability.logs import get_logger
from smartspec.storage import StorageError
from smartspec.storage.objects import S3ObjectStore

from .run_cleanup import Deleted, delete_run_files, run_path

__all__ = ["RetentionContext", "RetentionSweeper", "SweepReport", "register_retention"]

API = f"/apis/{GROUP}/{VERSION}"
PAGE = 500
NAMESPACE_SEGMENT = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
log = get_logger(__name__)


@dataclass(frozen=True)
class RetentionContext:
    """Clients and settings of the sweep."""

    kube: KubeClient
    events: EventRecorder
    store: S3ObjectStore
    defaults: Lifetimes
    sweep_seconds: float
    orphan_grace_seconds: int
    namespaces: tuple[str, ...]
    """Watched namespaces; empty: every namespace the API or the bucket knows."""
    signing: bool
    """Runs are attested (CORE-005): their files stay until the attestation is stored."""


@dataclass
class SweepReport:
    """What one sweep did (logged, and returned for tests and the CLI)."""

    runs_deleted: int = 0
    artifacts_deleted: int = 0
    transcripts_deleted: int = 0
    orphans_deleted: int = 0
    failures: int = 0


class RetentionSweeper:
    """Runs the sweep on a clock, while this replica leads."""

    def __init__(self, context: RetentionContext) -> None:
        self.context = context
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _forever(self) -> None:
        while True:
            try:
                report = await self.sweep(datetime.now(UTC))
                log.info("Retention sweep", **vars(report))
            except (KubeError, StorageError) as error:
                metrics.RETENTION_FAILURES.labels(stage="sweep").inc()
                log.warning("Retention sweep failed", error=str(error))
            await asyncio.sleep(self.context.sweep_seconds)

    async def sweep(self, now: datetime) -> SweepReport:
        """One pass over every watched namespace."""
        report = SweepReport()
        listed_at = now
        budgets = await self._budget_lifetimes()
        live: dict[str, set[str]] = defaultdict(set)
        async for run in self._runs():
            metadata = run["metadata"]
            live[metadata["namespace"]].add(metadata["uid"])
            await self._finished_run(run, budgets, now, report)
        namespaces = set(self.context.namespaces)
        if not namespaces:
            namespaces = {ns for ns, _ in budgets} | set(live)
            try:
                found = await asyncio.to_thread(self.context.store.list_children, "")
            except StorageError as error:  # deleted namespaces' files wait for the next sweep
                report.failures += 1
                metrics.RETENTION_FAILURES.labels(stage="orphans").inc()
                log.warning("Bucket folders not listed", error=str(error))
                found = []
            namespaces |= _namespace_like(found)
        cutoff = listed_at - timedelta(seconds=self.context.orphan_grace_seconds)
        for namespace in sorted(namespaces):
            ns_budgets = [lives for (ns, _), lives in budgets.items() if ns == namespace]
            lifetime = namespace_transcript_lifetime(ns_budgets, self.context.defaults)
            await self._transcripts(namespace, lifetime, now, report)
            await self._orphans(namespace, frozenset(live[namespace]), cutoff, report)
        metrics.RETENTION_LAST_SWEEP.set_to_current_time()
        return report

    # ------------------------------------------------------------ listings

    async def _budget_lifetimes(self) -> dict[tuple[str, str], Lifetimes]:
        found: dict[tuple[str, str], Lifetimes] = {}
        async for budget in self._list(BUDGETS):
            metadata = budget["metadata"]
            raw = (budget.get("spec") or {}).get("retention")
            try:
                policy = RetentionPolicy.model_validate(raw) if raw is not None else None
            except ValidationError as error:
                # The budget reconciler reports it; keep everything rather than guess.
                log.warning("Budget retention does not parse", problems=str(error))
                policy = RetentionPolicy()
            key = (metadata["namespace"], metadata["name"])
            found[key] = lifetimes(policy, self.context.defaults)
        return found

    async def _runs(self) -> AsyncIterator[dict[str, Any]]:
        async for run in self._list(PLURAL):
            yield run

    async def _list(self, plural: str) -> AsyncIterator[dict[str, Any]]:
        """Every object of a kind in the watched namespaces, a page at a time."""
        paths = [f"{API}/namespaces/{ns}/{plural}" for ns in self.context.namespaces]
        for path in paths or [f"{API}/{plural}"]:
            token = ""
            while True:
                query = {"limit": str(PAGE), **({"continue": token} if token else {})}
                page = await self.context.kube.request("GET", path, query=query)
                for item in page.get("items") or []:
                    yield item
                token = (page.get("metadata") or {}).get("continue") or ""
                if not token:
                    break

    # ------------------------------------------------------------ runs

    async def _finished_run(
        self,
        run: Mapping[str, Any],
        budgets: Mapping[tuple[str, str], Lifetimes],
        now: datetime,
        report: SweepReport,
    ) -> None:
        metadata, status = run["metadata"], run.get("status") or {}
        if metadata.get("deletionTimestamp") or status.get("phase") not in {"Succeeded", "Failed"}:
            return
        budget = ((run.get("spec") or {}).get("budgetRef") or {}).get("name", DEFAULT_BUDGET_NAME)
        lives = budgets.get((metadata["namespace"], budget), self.context.defaults)
        finished = FinishedRun(
            succeeded=status["phase"] == "Succeeded",
            completed_at=_time(status.get("completionTime") or metadata["creationTimestamp"]),
            signed=not self.context.signing or bool(status.get("provenance")),
            artifacts_deleted=bool(status.get("retention")),
            exempt=exemption(metadata) is not None,
        )
        action = run_action(finished, lives, now)
        if action is Action.KEEP:
            return
        try:
            deleted = await delete_run_files(self.context.store, metadata)
        except StorageError as error:
            report.failures += 1
            metrics.RETENTION_FAILURES.labels(stage="run").inc()
            log.warning("Run files not deleted", run=metadata["name"], error=str(error))
            return
        kind = "run" if action is Action.DELETE_RUN else "artifacts"
        metrics.RETENTION_OBJECTS_DELETED.labels(kind=kind).inc(deleted.objects)
        metrics.RETENTION_BYTES_DELETED.labels(kind=kind).inc(deleted.bytes)
        if action is Action.DELETE_RUN:
            await self._delete_run(run, finished, deleted, report)
        else:
            await self._mark_artifacts_deleted(run, deleted, now, report)

    async def _delete_run(
        self, run: Mapping[str, Any], finished: FinishedRun, deleted: Deleted, report: SweepReport
    ) -> None:
        metadata = run["metadata"]
        phase = "Succeeded" if finished.succeeded else "Failed"
        message = (
            f"{phase} run past its retention: deleted with its {deleted.objects} stored "
            f"objects ({deleted.bytes} bytes); its attestation and ledger entries are kept"
        )
        await self.context.events.record(
            run, EventRecord("Normal", Reason.RETENTION_EXPIRED, message), transition="retention"
        )
        try:
            await self.context.kube.request(
                "DELETE",
                run_path(metadata["namespace"], metadata["name"]),
                {"preconditions": {"uid": metadata["uid"]}},
            )
        except NotFoundError:
            return
        except KubeError as error:
            report.failures += 1
            metrics.RETENTION_FAILURES.labels(stage="run").inc()
            log.warning("Run not deleted", run=metadata["name"], error=str(error))
            return
        report.runs_deleted += 1
        metrics.RETENTION_RUNS_DELETED.labels(phase=phase).inc()
        log.info("Run deleted by retention", run=metadata["name"], objects=deleted.objects)

    async def _mark_artifacts_deleted(
        self, run: Mapping[str, Any], deleted: Deleted, now: datetime, report: SweepReport
    ) -> None:
        metadata = run["metadata"]
        message = (
            f"files past the tenant's artifact lifetime: {deleted.objects} objects "
            f"({deleted.bytes} bytes) deleted; the attestation and the digests in "
            "status.artifacts and status.evidence are kept"
        )
        try:
            conditions = GenerationRunStatus.model_validate(run.get("status") or {}).conditions
        except ValidationError:
            conditions = []
        wanted = set_condition(
            conditions,
            condition_type=ConditionType.ARTIFACTS_DELETED,
            status="True",
            reason=Reason.RETENTION_EXPIRED,
            message=message,
            observed_generation=metadata.get("generation"),
            now=now,
        )
        retention = Retention(
            artifacts_deleted_at=now, objects_deleted=deleted.objects, bytes_deleted=deleted.bytes
        )
        status = {"retention": retention.to_wire(), "conditions": [c.to_wire() for c in wanted]}
        try:
            await self.context.kube.merge_patch(
                run_path(metadata["namespace"], metadata["name"]) + "/status", {"status": status}
            )
        except KubeError as error:
            report.failures += 1
            metrics.RETENTION_FAILURES.labels(stage="artifacts").inc()
            log.warning("Run status not written", run=metadata["name"], error=str(error))
            return
        report.artifacts_deleted += 1
        await self.context.events.record(
            run, EventRecord("Normal", Reason.RETENTION_EXPIRED, message), transition="artifacts"
        )

    # ------------------------------------------------------------ namespace-wide

    async def _transcripts(
        self, namespace: str, lifetime: int | None, now: datetime, report: SweepReport
    ) -> None:
        if lifetime is None:
            return
        store = self.context.store

        def due() -> Iterator[list[StoredObject]]:
            listed = store.list_objects(transcripts_prefix(namespace))
            yield [o for o in listed if transcript_due(o, lifetime, now)]

        report.transcripts_deleted += await self._delete(namespace, "transcripts", due, report)

    async def _orphans(
        self, namespace: str, live: frozenset[str], cutoff: datetime, report: SweepReport
    ) -> None:
        store = self.context.store
        prefix = runs_prefix(namespace)

        def groups() -> Iterator[list[StoredObject]]:
            return orphans(store.list_objects(prefix), prefix, live, cutoff)

        report.orphans_deleted += await self._delete(namespace, "orphans", groups, report)

    async def _delete(
        self,
        namespace: str,
        kind: str,
        batches: Callable[[], Iterator[list[StoredObject]]],
        report: SweepReport,
    ) -> int:
        """Delete each batch as it is listed, off the event loop; objects deleted (counted
        and measured as `kind`), or 0 when the store failed (a failure of stage `kind`)."""
        store = self.context.store

        def delete() -> tuple[int, int]:
            count = size = 0
            for batch in batches():
                store.delete_objects([o.key for o in batch])
                count += len(batch)
                size += sum(o.size for o in batch)
            return count, size

        try:
            count, size = await asyncio.to_thread(delete)
        except StorageError as error:
            report.failures += 1
            metrics.RETENTION_FAILURES.labels(stage=kind).inc()
            log.warning("Objects not deleted", kind=kind, namespace=namespace, error=str(error))
            return 0
        if count:
            log.info("Objects deleted", kind=kind, namespace=namespace, objects=count, bytes=size)
        metrics.RETENTION_OBJECTS_DELETED.labels(kind=kind).inc(count)
        metrics.RETENTION_BYTES_DELETED.labels(kind=kind).inc(size)
        return count


def register_retention(registry: kopf.OperatorRegistry, context: RetentionContext) -> None:
    """Sweep while the operator runs (it runs only while it leads)."""
    sweeper = RetentionSweeper(context)

    @kopf.on.startup(registry=registry)
    async def start_sweeping(**_: Any) -> None:
        sweeper.start()

    @kopf.on.cleanup(registry=registry)
    async def stop_sweeping(**_: Any) -> None:
        await sweeper.stop()


def _namespace_like(names: list[str]) -> set[str]:
    """Top-level folders of the bucket that can be namespaces (others are not ours)."""
    return {n for n in names if len(n) <= 63 and NAMESPACE_SEGMENT.match(n)}


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)
