"""The GenerationRun reconciler: events and deadlines in, gather → decide (pure) → act → status.

Contract: specs/CORE-004-generation-runs.md, section "Reconciler".

A run is reconciled when it changes, when one of its sandbox Jobs or Pods changes (watched by
label, mapped back to the run), and when a deadline it computed falls due (one heap for all
runs: `next_look`), never on a per-object clock: finished runs cost nothing, and a live
run whose Jobs do not change costs one slow resync. kopf only delivers the watch events; a
`WorkQueue` does the work, one key at a time per run, with bounded concurrency.

Each reconcile reads the run fresh, gathers (`run_observe`), decides
(`smartspec.logic.run_machine.decide`), acts (`run_actions`), posts the decision's Events
once per transition, and writes the status with one merge patch of the keys that changed
(`smartspec.logic.status_patch`); `usage` is the gateway's and is only ever opened, at zero,
by a compare-and-swap write.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from smartspec.api.manifests import ManifestError, parse_manifest
from smartspec.api.v1alpha1 import GROUP, VERSION, Resource
from smartspec.api.v1alpha1.generationrun import (
    GATEWAY_STATUS_KEYS,
    PLURAL,
    GenerationRun,
    GenerationRunStatus,
    Phase,
    Reason,
    Usage,
)
from smartspec.builders.jobs import LABEL_RUN, LABEL_RUN_UID
from smartspec.kube.client import ConflictError, NotFoundError
from smartspec.logic.canonical import canonical_json
from smartspec.logic.conditions import set_condition
from smartspec.logic.events import EventRecord
from smartspec.logic.retention import FINALIZER
from smartspec.logic.run_machine import Decision, decide, is_terminal, next_look, settled
from smartspec.logic.status_patch import status_changes
from smartspec.observability import metrics
from smartspec.observability.logs import get_logger
from smartspec.provenance import AttestationError, attest_run, lacks_provenance
from smartspec.reconcilers.scope import reconcile_scope

from .run_actions import act
from .run_cleanup import RunCleanup, holds_finalizer
from .run_context import RetryLater, RunContext
from .run_observe import CREATED_STATE, FINISHED_STATES, gather, sandbox_state
from .work_queue import WorkQueue

__all__ = ["SANDBOX_SELECTOR", "RunContext", "RunReconciler", "register_run_handlers"]

API = f"/apis/{GROUP}/{VERSION}"
SANDBOX_SELECTOR = LABEL_RUN_UID
"""Server-side label selector of the Jobs and Pods watched: only sandboxes are sent."""
TERMINAL = frozenset({"Succeeded", "Failed"})
SPEC_LABEL = "smartspec.dev/spec"
SPEC_REVISION_LABEL = "smartspec.dev/spec-revision"
log = get_logger(__name__)

RunKey = tuple[str, str]
"""(namespace, name) of a GenerationRun."""


class RunReconciler:
    """Maps watch events to runs and reconciles them from a work queue."""

    def __init__(self, context: RunContext) -> None:
        self.context = context
        self.queue: WorkQueue[RunKey] = WorkQueue(self.reconcile, workers=context.workers)
        self._names: dict[tuple[str, str], str] = {}
        """(namespace, uid) -> name of live runs, to map a sandbox Pod back to its run."""
        self._sandboxes: dict[str, str] = {}
        """uid -> `sandbox_state` of live sandbox Jobs and Pods that changed since created."""
        self._echoes: dict[RunKey, set[str]] = {}
        """resourceVersions this reconciler wrote that carry no news for it (settled)."""
        self._task: asyncio.Task[None] | None = None
        self.cleanup = RunCleanup(
            kube=context.kube,
            events=context.events,
            store=context.cleanup_store or context.store,
            timeout_seconds=context.finalizer_timeout_seconds,
        )

    # ------------------------------------------------------------ events

    def on_run_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        metadata = body.get("metadata") or {}
        namespace, name, uid = metadata.get("namespace", ""), metadata["name"], metadata["uid"]
        key = (namespace, name)
        echoes = self._echoes.pop(key, set())
        if event_type == "DELETED":
            self._names.pop((namespace, uid), None)
            self.queue.forget(key)
            return
        if metadata.get("deletionTimestamp") and holds_finalizer(metadata):
            self.queue.add(key)  # deleted: its files go before it does
            return
        if (body.get("status") or {}).get("phase") in TERMINAL:
            # Finished: nothing will change it again, and it costs nothing from now on.
            self._names.pop((namespace, uid), None)
            if self.context.provenance is not None and lacks_provenance(body.get("status")):
                self.queue.add((namespace, name))  # once more, to sign it (CORE-005)
            return
        self._names[(namespace, uid)] = name
        version = metadata.get("resourceVersion")
        if version in echoes:
            # The echo of a write whose reconcile already decided on what it wrote.
            echoes.discard(version)
            if echoes:
                self._echoes[key] = echoes
            return
        self.queue.add(key)

    def on_sandbox_event(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A sandbox Job or Pod changed in a way its run decides on: the run looks again.
        Other changes (a Job's active count, a Pod being created) carry no news for it."""
        metadata = body.get("metadata") or {}
        uid = metadata.get("uid", "")
        state = sandbox_state(kind, body)
        before = self._sandboxes.pop(uid, CREATED_STATE[kind])
        if event_type != "DELETED":
            if state not in FINISHED_STATES:
                self._sandboxes[uid] = state  # finished ones cost nothing from now on
            if state == before:
                return
        namespace = metadata.get("namespace", "")
        owners = metadata.get("ownerReferences") or []
        owner = next((ref for ref in owners if ref.get("kind") == "GenerationRun"), None)
        labels = metadata.get("labels") or {}
        if owner is not None:
            name = owner["name"]
        else:
            # A Pod: its owner is the Job. The uid label maps it to a live run; the name
            # label is the run's name unless that was too long for a label.
            uid = labels.get(LABEL_RUN_UID, "")
            name = self._names.get((namespace, uid), labels.get(LABEL_RUN, ""))
        if name:
            self.queue.add((namespace, name))

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self.queue.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ------------------------------------------------------------ one reconcile

    async def reconcile(self, key: RunKey) -> float | None:
        """Reconcile one run; returns when to look at it again (None: only on events)."""
        namespace, name = key
        try:
            body = await self.context.kube.get(f"{API}/namespaces/{namespace}/{PLURAL}/{name}")
        except NotFoundError:
            self.queue.forget(key)
            return None
        if body["metadata"].get("deletionTimestamp"):
            with reconcile_scope("GenerationRun", body, "run") as outcome:
                outcome.value = "finalize"
                return await self.cleanup.finalize(body)
        return await self._reconcile_live(key, body)

    async def _reconcile_live(self, key: RunKey, body: Mapping[str, Any]) -> float | None:
        with reconcile_scope("GenerationRun", body, "run") as outcome:
            try:
                run = parse_manifest(body, "GenerationRun")
            except ManifestError as error:
                log.warning("GenerationRun does not parse", problems=error.problems)
                outcome.value = "invalid"
                await self._refuse(body, error)
                return None
            if not isinstance(run, GenerationRun) or is_terminal(run):
                return await self._attest(body, run)  # a finished run is only signed
            observations = await gather(run, self.context)
            now = datetime.now(UTC)
            decision = decide(run, observations, now)
            try:
                await act(run, decision, self.context)
            except RetryLater as later:
                log.warning("Reconcile waits", reason=str(later), retry_seconds=later.delay)
                outcome.value = "retry"
                return later.delay
            await self._report(body, run, decision)
            written = await self._write(body, run, decision)
            if written is None:
                return 0.0  # the gateway wrote first: read again and decide on that
            if written and settled(run, observations, decision, now):
                self._echoes[key] = written
            _observe(run, decision)
            return next_look(run, decision, now, self.context.resync_seconds)

    async def _refuse(self, body: Mapping[str, Any], error: ManifestError) -> None:
        """A run the API server admitted but the types refuse ends Failed, Succeeded=False
        `Invalid` naming the fields, with one Warning Event: never silently stuck."""
        metadata = body["metadata"]
        raw = body.get("status") or {}
        if raw.get("phase") in TERMINAL:
            return
        try:
            conditions = GenerationRunStatus.model_validate(raw).conditions
        except ValidationError:
            conditions = []
        message = "; ".join(error.problems)
        wanted = set_condition(
            conditions,
            condition_type="Succeeded",
            status="False",
            reason=Reason.INVALID,
            message=message,
            observed_generation=metadata.get("generation"),
            now=datetime.now(UTC),
        )
        path = f"{API}/namespaces/{metadata['namespace']}/{PLURAL}/{metadata['name']}/status"
        status = {"phase": Phase.FAILED.value, "conditions": [c.to_wire() for c in wanted]}
        await self.context.kube.merge_patch(path, {"status": status})
        await self.context.events.record(
            body,
            EventRecord("Warning", Reason.INVALID, message),
            transition=f"invalid:{metadata.get('generation')}",
        )

    async def _attest(self, body: Mapping[str, Any], run: Resource) -> float | None:
        """Sign a finished run's provenance once (CORE-005); None when there is nothing to do."""
        settings = self.context.provenance
        if not isinstance(run, GenerationRun) or settings is None or not is_terminal(run):
            return None
        if run.status is None or run.status.provenance is not None:
            return None
        try:
            fields = await attest_run(run, self.context.kube, self.context.store, settings)
        except AttestationError as error:
            log.warning("Provenance waits", reason=str(error), retry_seconds=error.delay)
            return error.delay
        metadata = body["metadata"]
        path = f"{API}/namespaces/{metadata['namespace']}/{PLURAL}/{metadata['name']}/status"
        await self.context.kube.merge_patch(path, {"status": fields})
        return None

    async def _report(
        self, body: Mapping[str, Any], run: GenerationRun, decision: Decision
    ) -> None:
        """Post the decision's Events, each named by the state the run is leaving, so that
        reconciles which start from the same status report a transition once."""
        before = (run.status or GenerationRunStatus()).to_wire()
        for key in GATEWAY_STATUS_KEYS:  # the gateway's, and no part of the run's phase
            before.pop(key, None)
        state = f"{run.metadata.generation}:{canonical_json(before).decode()}"
        for event in decision.events:
            await self.context.events.record(body, event, transition=state)

    async def _write(
        self, body: Mapping[str, Any], run: GenerationRun, decision: Decision
    ) -> set[str] | None:
        """The status keys that changed, and once pinned the spec labels and the
        `smartspec.dev/artifacts` finalizer; the resourceVersions written, or None when a
        write lost a compare-and-swap (opening `usage`, or replacing the finalizers)."""
        metadata = body["metadata"]
        path = f"{API}/namespaces/{metadata['namespace']}/{PLURAL}/{metadata['name']}"
        before = run.status.to_wire() if run.status is not None else {}
        changes = status_changes(before, decision.status.to_wire(), others=GATEWAY_STATUS_KEYS)
        patch: dict[str, Any] = {"status": changes}
        if run.status is None or run.status.usage is None:
            # Zero usage before any model call (a builtin run never makes one). The gateway
            # adds to `usage` by compare-and-swap; this write is conditional too, so it never
            # overwrites what a gateway wrote first.
            changes["usage"] = Usage().to_wire()
            patch["metadata"] = {"resourceVersion": metadata["resourceVersion"]}
        written: set[str] = set()
        version = metadata["resourceVersion"]
        if changes:
            try:
                answer = await self.context.kube.merge_patch(f"{path}/status", patch)
            except ConflictError:
                return None
            version = _version(answer)
            written.add(version)
        pinned = decision.status.pinned_spec
        if pinned is not None:
            labels = metadata.get("labels") or {}
            wanted = {SPEC_LABEL: pinned.name, SPEC_REVISION_LABEL: str(pinned.revision)}
            missing: dict[str, Any] = {k: v for k, v in wanted.items() if labels.get(k) != v}
            update: dict[str, Any] = {"labels": missing} if missing else {}
            if not holds_finalizer(metadata) and not is_terminal(run):
                # Pinned runs get Jobs, and Jobs write files: from now on deleting the run
                # deletes them too. The list is replaced whole, so only on the version read.
                update["finalizers"] = [*(metadata.get("finalizers") or []), FINALIZER]
                update["resourceVersion"] = version
            if update:
                try:
                    answer = await self.context.kube.merge_patch(path, {"metadata": update})
                except ConflictError:
                    return None
                written.add(_version(answer))
        return written


def register_run_handlers(registry: kopf.OperatorRegistry, context: RunContext) -> RunReconciler:
    """Register on an explicit registry (no import-time side effects)."""
    reconciler = RunReconciler(context)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def run_event(*, type: str | None, body: kopf.Body, **_: Any) -> None:
        reconciler.on_run_event(type, body)

    sandboxes = {LABEL_RUN_UID: kopf.PRESENT}

    @kopf.on.event("batch", "v1", "jobs", labels=sandboxes, registry=registry)
    async def job_event(*, type: str | None, body: kopf.Body, **_: Any) -> None:
        reconciler.on_sandbox_event("Job", type, body)

    @kopf.on.event("", "v1", "pods", labels=sandboxes, registry=registry)
    async def pod_event(*, type: str | None, body: kopf.Body, **_: Any) -> None:
        reconciler.on_sandbox_event("Pod", type, body)

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Server-side filters: the API server sends sandbox Jobs and Pods only.
        settings.watching.label_selectors["batch", "v1", "jobs"] = SANDBOX_SELECTOR
        settings.watching.label_selectors["", "v1", "pods"] = SANDBOX_SELECTOR
        reconciler.start()

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        await reconciler.stop()

    return reconciler


def _version(answer: Mapping[str, Any]) -> str:
    return str((answer.get("metadata") or {}).get("resourceVersion", ""))


def _observe(run: GenerationRun, decision: Decision) -> None:
    """Metrics for what this reconcile finished: attempts and, at the end, the run."""
    previous = {a.number: a for a in (run.status.attempts if run.status else [])}
    for attempt in decision.status.attempts:
        before = previous.get(attempt.number)
        newly_done = before is None or before.finished_at is None
        if attempt.finished_at and attempt.started_at and newly_done:
            seconds = (attempt.finished_at - attempt.started_at).total_seconds()
            metrics.ATTEMPT_DURATION.labels(result=attempt.result.value).observe(seconds)
            kind = attempt.failure_kind.value if attempt.failure_kind else "none"
            metrics.ATTEMPTS.labels(result=attempt.result.value, kind=kind).inc()
    status = decision.status
    if status.phase not in TERMINAL:
        return
    succeeded = next((c for c in status.conditions if c.type == "Succeeded"), None)
    reason = succeeded.reason if succeeded is not None else "Unknown"
    metrics.RUNS_FINISHED.labels(phase=str(status.phase), reason=reason).inc()
    metrics.RUN_ATTEMPTS.observe(status.attempt or 0)
    if status.phase == "Succeeded" and status.start_time and status.completion_time:
        metrics.TIME_TO_GREEN.observe((status.completion_time - status.start_time).total_seconds())
