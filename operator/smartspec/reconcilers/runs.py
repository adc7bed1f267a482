"""kopf handlers for `GenerationRun`: gather → decide (pure) → act → status and Events.

Contract: specs/CORE-004-generation-runs.md.

Gather reads the run's Spec and CreditBudget, its Jobs (with their pods' exit codes and
termination messages) and what the sandboxes left in S3. `smartspec.logic.run_machine.decide`
turns that into the next status and actions. Act creates Jobs, their instructions Secrets and
NetworkPolicies by deterministic names (an existing one is adopted, never duplicated),
suspends, resumes or deletes Jobs. Handlers run on create, update and resume, and on a short
timer while the run is not finished (Jobs progress without touching the run).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import kopf
from pydantic import ValidationError

from smartspec.api.manifests import ManifestError, parse_manifest
from smartspec.api.sandbox import (
    FILES_PREFIX,
    GENERATION_FEEDBACK_KEY,
    MANIFEST_KEY,
    REPORT_SUMMARY_KEY,
    SESSION_FAILURE,
    DocumentRef,
    Feedback,
    FileRef,
    Manifest,
    TestReport,
    parse_result_line,
)
from smartspec.api.v1alpha1 import GROUP, VERSION
from smartspec.api.v1alpha1.creditbudget import CreditBudget
from smartspec.api.v1alpha1.generationrun import (
    PLURAL,
    Backend,
    GenerationRun,
    GenerationRunStatus,
    Usage,
)
from smartspec.builders.instructions import build_generator_instructions, build_tester_instructions
from smartspec.builders.jobs import (
    SandboxRole,
    SandboxSettings,
    build_generator_job,
    build_instructions_secret,
    build_network_policies,
    build_test_job,
    instructions_secret_name,
    local_model_for,
)
from smartspec.kube.client import ConflictError, KubeClient, KubeError, NotFoundError
from smartspec.kube.events import EventRecorder
from smartspec.logic.budget import model_allowed
from smartspec.logic.canonical import canonical_json
from smartspec.logic.naming import generator_job_name, test_job_name
from smartspec.logic.object_keys import attempt_prefix
from smartspec.logic.run_machine import (
    OOM_KILLED,
    Action,
    ActionKind,
    BudgetObservation,
    Decision,
    FeedbackPlan,
    JobObservation,
    JobState,
    ManifestObservation,
    Observations,
    ReportObservation,
    SpecObservation,
    decide,
    feedback_plan,
    is_terminal,
)
from smartspec.logic.run_tokens import RunTokenClaims, mint_run_token
from smartspec.logic.spec_lint import known_spec
from smartspec.observability import metrics
from smartspec.observability.logs import get_logger
from smartspec.provenance import (
    AttestationError,
    ProvenanceSettings,
    attest_run,
    lacks_provenance,
)
from smartspec.reconcilers.scope import reconcile_scope
from smartspec.storage import ObjectMissingError, S3ObjectStore, StorageError

HANDLER_ID = "generation-run"
TIMER_ID = "generation-run-progress"
API = f"/apis/{GROUP}/{VERSION}"
log = get_logger(__name__)


@dataclass(frozen=True)
class RunContext:
    """What the run handlers need from the process."""

    kube: KubeClient
    events: EventRecorder
    store: S3ObjectStore
    sandbox: SandboxSettings
    token_keys: tuple[bytes, ...]
    gateway_base_url: str
    url_ttl_seconds: int
    progress_seconds: float
    provenance: ProvenanceSettings | None = None
    """Keys and builder id of the finished runs' attestations (CORE-005); None: none made."""


def register_run_handlers(registry: kopf.OperatorRegistry, context: RunContext) -> None:
    """Register on an explicit registry (no import-time side effects)."""

    @kopf.on.resume(GROUP, VERSION, PLURAL, id=HANDLER_ID, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, id=HANDLER_ID, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, id=HANDLER_ID, registry=registry)
    async def reconcile(*, body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await reconcile_run(body, patch, context)

    @kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        id=TIMER_ID,
        interval=context.progress_seconds,
        when=_in_progress if context.provenance is None else _in_progress_or_unsigned,
        registry=registry,
    )
    async def progress(*, body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await reconcile_run(body, patch, context)


def _in_progress(*, status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in {"Succeeded", "Failed"}


def _in_progress_or_unsigned(*, status: kopf.Status, **_: Any) -> bool:
    return _in_progress(status=status) or lacks_provenance(status)


async def reconcile_run(body: kopf.Body, patch: kopf.Patch, context: RunContext) -> None:
    with reconcile_scope("GenerationRun", body, "run") as outcome:
        try:
            resource = parse_manifest(body, "GenerationRun")
        except ManifestError as error:
            log.warning("GenerationRun does not parse", problems=error.problems)
            outcome.value = "invalid"
            return
        if not isinstance(resource, GenerationRun):
            return
        await _open_usage(body, resource, context)
        if is_terminal(resource):
            await _attest(resource, patch, context)  # a finished run is only signed
            return
        try:
            observations = await gather(resource, context)
            decision = decide(resource, observations, datetime.now(UTC))
            await act(resource, decision, context)
        except (KubeError, StorageError) as error:
            raise kopf.TemporaryError(str(error), delay=5) from error
        await _report(body, resource, decision, context)
        _write(body, patch, resource, decision)


async def _attest(run: GenerationRun, patch: kopf.Patch, context: RunContext) -> None:
    """Sign a finished run's provenance once (CORE-005)."""
    if context.provenance is None or run.status is None or run.status.provenance is not None:
        return
    try:
        patch.status.update(await attest_run(run, context.kube, context.store, context.provenance))
    except AttestationError as error:
        raise kopf.TemporaryError(str(error), delay=error.delay) from error


async def _report(
    body: kopf.Body, run: GenerationRun, decision: Decision, context: RunContext
) -> None:
    """Post the decision's Events, each named by the state the run is leaving, so that
    reconciles which start from the same status report a transition once."""
    before = (run.status or GenerationRunStatus()).to_wire()
    before.pop("usage", None)  # the gateway's, and no part of the run's phase
    state = f"{run.metadata.generation}:{canonical_json(before).decode()}"
    for event in decision.events:
        await context.events.record(body, event, transition=state)


async def _open_usage(body: kopf.Body, run: GenerationRun, context: RunContext) -> None:
    """Show a run's usage as zero before any model call (a builtin run never makes one).

    `usage` is the gateway's: it adds to it with compare-and-swap writes. This one write is
    conditional on the resourceVersion read, so it can never overwrite what a gateway wrote
    first; on a conflict the change that caused it brings the run back here.
    """
    if run.status is not None and run.status.usage is not None:
        return
    metadata = body.get("metadata", {})
    path = f"{API}/namespaces/{metadata['namespace']}/{PLURAL}/{metadata['name']}/status"
    patch = {
        "metadata": {"resourceVersion": metadata["resourceVersion"]},
        "status": {"usage": Usage().to_wire()},
    }
    try:
        await context.kube.merge_patch(path, patch)
    except ConflictError:
        log.debug("Run changed before its usage was opened")
    except KubeError as error:
        raise kopf.TemporaryError(f"cannot open the run's usage: {error}", delay=5) from error


# ---------------------------------------------------------------- gather


async def gather(run: GenerationRun, context: RunContext) -> Observations:
    namespace = run.metadata.namespace or ""
    local = local_model_for(run, context.sandbox)
    observations = Observations(
        spec=await _observe_spec(context.kube, namespace, run.spec.spec_ref.name),
        budget=await _observe_budget(context.kube, namespace, run),
        jobs=await _observe_jobs(context.kube, namespace, run),
        local_model_port=local.port if local is not None else None,
        run_tokens_configured=bool(context.token_keys),
    )
    status = run.status
    if status is None or status.pinned_spec is None:
        return observations
    uid = run.metadata.uid or ""
    for attempt in status.attempts:
        prefix = attempt_prefix(namespace, run.metadata.name, uid, attempt.number)
        gen = observations.jobs.get(generator_job_name(run.metadata.name, attempt.number))
        if gen is not None and gen.state is JobState.SUCCEEDED:
            manifest = _read_manifest(context.store, prefix)
            if manifest is not None:
                observations.generator_results[attempt.number] = manifest
        test = observations.jobs.get(test_job_name(run.metadata.name, attempt.number))
        if test is not None and test.state in {JobState.SUCCEEDED, JobState.FAILED}:
            report = _read_report(context.store, prefix)
            if report is not None:
                observations.test_results[attempt.number] = report
    return observations


async def _observe_spec(kube: KubeClient, namespace: str, name: str) -> SpecObservation | None:
    try:
        body = await kube.get(f"{API}/namespaces/{namespace}/specs/{name}")
    except NotFoundError:
        return None
    spec, status = body.get("spec") or {}, body.get("status") or {}
    conditions: list[dict[str, Any]] = status.get("conditions") or []
    ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
    return SpecObservation(
        lifecycle=known_spec(spec).lifecycle,
        ready=ready.get("status") == "True",
        ready_reason=str(ready.get("reason", "not reconciled yet")),
        revision=status.get("revision"),
        content_hash=status.get("contentHash"),
        snapshot_uri=status.get("snapshotUri"),
        history={
            entry["contentHash"]: (int(entry["revision"]), entry.get("snapshotUri"))
            for entry in status.get("history") or []
        },
    )


async def _observe_budget(
    kube: KubeClient, namespace: str, run: GenerationRun
) -> BudgetObservation | None:
    if run.spec.generator.backend is not Backend.LLM:
        return None
    path = f"{API}/namespaces/{namespace}/creditbudgets/{run.spec.budget_ref.name}"
    try:
        budget = CreditBudget.model_validate(await kube.get(path))
    except NotFoundError:
        return None
    status = budget.status
    spent = status.spent_credits if status else 0
    return BudgetObservation(
        exhausted=spent >= budget.spec.limit_credits and budget.spec.enforcement.value == "Enforce",
        model_allowed=model_allowed(budget.spec.models, run.spec.generator.model or ""),
    )


async def _observe_jobs(
    kube: KubeClient, namespace: str, run: GenerationRun
) -> dict[str, JobObservation]:
    selector = {"labelSelector": f"smartspec.dev/run-uid={run.metadata.uid}"}
    jobs = await kube.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs", query=selector)
    pods = await kube.request("GET", f"/api/v1/namespaces/{namespace}/pods", query=selector)
    terminated: dict[str, Mapping[str, Any]] = {}
    pod_ips: dict[str, str] = {}
    for pod in pods.get("items", []):
        job = (pod.get("metadata", {}).get("labels") or {}).get("job-name")
        status = pod.get("status") or {}
        if job and status.get("phase") == "Running" and status.get("podIP"):
            pod_ips[job] = status["podIP"]
        for container in status.get("containerStatuses") or []:
            state = (container.get("state") or {}).get("terminated")
            if job and state:
                terminated[job] = state
    observed: dict[str, JobObservation] = {}
    for job in jobs.get("items", []):
        name = job["metadata"]["name"]
        observation = _job_observation(job, terminated.get(name))
        if observation.state is JobState.ACTIVE and name in pod_ips:
            observation = replace(observation, pod_ip=pod_ips[name])
        observed[name] = observation
    return observed


def _job_observation(job: Mapping[str, Any], pod_state: Mapping[str, Any] | None) -> JobObservation:
    conditions = {
        c["type"]: c
        for c in (job.get("status") or {}).get("conditions") or []
        if c.get("status") == "True"
    }
    exit_code = int(pod_state["exitCode"]) if pod_state and "exitCode" in pod_state else None
    message = str(pod_state.get("message") or "") if pod_state else ""
    # The sandbox's result line, when the termination message holds one: its fields, not
    # its wording, decide what happens next.
    result = parse_result_line(message)
    detail = result.detail if result is not None else None
    if detail is not None and detail.message:
        message = detail.message
    if "Complete" in conditions:
        return JobObservation(JobState.SUCCEEDED, exit_code=exit_code or 0, message=message)
    if "Failed" in conditions:
        reason = str(conditions["Failed"].get("reason", ""))
        if pod_state and pod_state.get("reason") == OOM_KILLED:
            reason = OOM_KILLED  # the memory limit ended it, whatever the Job controller says
        return JobObservation(
            JobState.FAILED,
            exit_code=exit_code,
            reason=reason,
            message=message,
            refusal=detail.refusal if detail else None,
            failure_kind=detail.kind if detail else None,
            feedback_sha256=detail.feedback_sha256 if detail else None,
        )
    if (job.get("spec") or {}).get("suspend"):
        return JobObservation(JobState.SUSPENDED)
    return JobObservation(JobState.ACTIVE)


_ModelT = TypeVar("_ModelT", Manifest, TestReport)


def _read_document(
    store: S3ObjectStore, key: str, model: type[_ModelT]
) -> tuple[_ModelT, str] | None:
    """A sandbox's document and its sha256, or None when it was not written (yet).

    A document that exists but does not parse as the contract's model is treated like a
    missing one and logged: the sandbox that wrote it broke the contract. Any other storage
    error is raised, so the reconcile is retried rather than acting on a guess.
    """
    try:
        raw = store.get(key)
    except ObjectMissingError:
        return None
    try:
        document = model.model_validate_json(raw)
    except ValidationError as error:
        log.warning("Sandbox output breaks the contract", key=key, error=str(error)[:2000])
        return None
    return document, "sha256:" + hashlib.sha256(raw).hexdigest()


def _read_manifest(store: S3ObjectStore, prefix: str) -> ManifestObservation | None:
    read = _read_document(store, prefix + MANIFEST_KEY, Manifest)
    if read is None:
        return None
    manifest, digest = read
    return ManifestObservation(
        artifacts_uri=store.uri(prefix + FILES_PREFIX),
        manifest_sha256=digest,
        file_count=len(manifest.files),
        tasks_total=len(manifest.tasks),
    )


def _read_report(store: S3ObjectStore, prefix: str) -> ReportObservation | None:
    read = _read_document(store, prefix + REPORT_SUMMARY_KEY, TestReport)
    if read is None:
        return None
    report, digest = read
    passed = report.tests.passed
    failed = report.tests.failed + report.tests.errors
    # A pytest session that gave no result (killed at the time limit, crashed) says why in
    # its "(pytest session)" failure.
    session = [f for f in report.failures if f.test == SESSION_FAILURE]
    error = session[0].message.split("\n", 1)[0] if session else None
    return ReportObservation(
        report_uri=store.uri(prefix + REPORT_SUMMARY_KEY),
        summary_sha256=digest,
        passed=passed,
        failed=failed,
        skipped=report.tests.skipped,
        requirements_covered=sum(1 for item in report.requirements.values() if item.passed),
        requirements_total=len(report.requirements),
        all_passed=report.result == "passed" and passed > 0 and failed == 0,
        error=error if report.result == "error" else None,
    )


# ---------------------------------------------------------------- act


async def act(run: GenerationRun, decision: Decision, context: RunContext) -> None:
    for action in decision.actions:
        if action.kind is ActionKind.CREATE_GENERATOR_JOB:
            await _create_generator(run, decision, action, context)
        elif action.kind is ActionKind.CREATE_TEST_JOB:
            await _create_tester(run, decision, action, context)
        elif action.kind in {ActionKind.SUSPEND_JOBS, ActionKind.RESUME_JOBS}:
            await _set_suspended(run, context, suspend=action.kind is ActionKind.SUSPEND_JOBS)
        elif action.kind is ActionKind.DELETE_ACTIVE_JOBS:
            await _delete_jobs(run, context)


async def _create(kube: KubeClient, path: str, body: Mapping[str, Any]) -> bool:
    """Create, or adopt the object that a previous reconcile already created."""
    try:
        await kube.post(path, dict(body))
    except ConflictError:
        return False
    return True


async def _create_generator(
    run: GenerationRun, decision: Decision, action: Action, context: RunContext
) -> None:
    namespace, name, uid = run.metadata.namespace or "", run.metadata.name, run.metadata.uid or ""
    pinned = decision.status.pinned_spec
    if pinned is None:
        raise ValueError("a generator Job before admission")
    attempt = action.attempt
    prefix = attempt_prefix(namespace, name, uid, attempt)
    plan = feedback_plan(decision.status, attempt)
    feedback = _feedback(run, plan, context) if plan is not None else None
    token = None
    if run.spec.generator.backend is Backend.LLM:
        if not context.token_keys:
            # Admitted by an operator that had keys; wait for one that has them again.
            raise kopf.TemporaryError(
                "the operator has no run-token keys (SMARTSPEC_TOKEN_KEYS_FILE)", delay=60
            )
        claims = RunTokenClaims(
            namespace=namespace,
            run=name,
            run_uid=uid,
            attempt=attempt,
            budget=run.spec.budget_ref.name,
            spec_revision=pinned.revision,
            expires_at=int(time.time()) + run.spec.timeouts.attempt_seconds + 300,
            replay_of=run.spec.replay_of.name if run.spec.replay_of else None,
        )
        token = mint_run_token(claims, context.token_keys[0])
    instructions = build_generator_instructions(
        run,
        attempt,
        pinned,
        snapshot_url=context.store.presign_get(_key(pinned.snapshot_uri), context.url_ttl_seconds),
        upload=context.store.presign_upload(prefix, context.url_ttl_seconds),
        feedback=feedback,
        gateway_base_url=context.gateway_base_url,
        token=token,
    )
    secret = build_instructions_secret(run, attempt, SandboxRole.GENERATOR, instructions)
    await _create(context.kube, f"/api/v1/namespaces/{namespace}/secrets", secret)
    for policy in build_network_policies(run, context.sandbox):
        await _create(
            context.kube,
            f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies",
            policy,
        )
    job = build_generator_job(
        run,
        attempt,
        context.sandbox,
        instructions_secret=instructions_secret_name(name, attempt, SandboxRole.GENERATOR),
        deadline_seconds=run.spec.timeouts.attempt_seconds,
    )
    if await _create(context.kube, f"/apis/batch/v1/namespaces/{namespace}/jobs", job):
        log.info("Created Job", job=job["metadata"]["name"], attempt=attempt)


async def _create_tester(
    run: GenerationRun, decision: Decision, action: Action, context: RunContext
) -> None:
    namespace, name, uid = run.metadata.namespace or "", run.metadata.name, run.metadata.uid or ""
    pinned = decision.status.pinned_spec
    if pinned is None:
        raise ValueError("a test Job before admission")
    attempt = action.attempt
    prefix = attempt_prefix(namespace, name, uid, attempt)
    read = _read_document(context.store, prefix + MANIFEST_KEY, Manifest)
    if read is None:
        raise StorageError(f"the manifest of attempt {attempt} is missing")
    manifest, digest = read
    ttl = context.url_ttl_seconds
    files = _file_refs(context, prefix, manifest)
    instructions = build_tester_instructions(
        run,
        attempt,
        pinned,
        snapshot_url=context.store.presign_get(_key(pinned.snapshot_uri), ttl),
        manifest_url=context.store.presign_get(prefix + MANIFEST_KEY, ttl),
        manifest_sha256=digest,
        files=files,
        upload=context.store.presign_upload(prefix, ttl),
        timeout_seconds=max(60, run.spec.timeouts.attempt_seconds // 2),
    )
    secret = build_instructions_secret(run, attempt, SandboxRole.TESTER, instructions)
    await _create(context.kube, f"/api/v1/namespaces/{namespace}/secrets", secret)
    job = build_test_job(
        run,
        attempt,
        context.sandbox,
        instructions_secret=instructions_secret_name(name, attempt, SandboxRole.TESTER),
        deadline_seconds=run.spec.timeouts.attempt_seconds,
    )
    if await _create(context.kube, f"/apis/batch/v1/namespaces/{namespace}/jobs", job):
        log.info("Created Job", job=job["metadata"]["name"], attempt=attempt)


def _file_refs(context: RunContext, prefix: str, manifest: Manifest) -> list[FileRef]:
    """Every file of an attempt's manifest, with a presigned GET each."""
    ttl = context.url_ttl_seconds
    return [
        FileRef(
            path=entry.path,
            sha256=entry.sha256,
            size=entry.size,
            url=context.store.presign_get(prefix + FILES_PREFIX + entry.path, ttl),
        )
        for entry in manifest.files
    ]


def _feedback(run: GenerationRun, plan: FeedbackPlan, context: RunContext) -> Feedback:
    """The feedback block of the next generator: presigned GETs of exactly the documents
    the previous attempt left (its plan says which)."""
    namespace, name, uid = run.metadata.namespace or "", run.metadata.name, run.metadata.uid or ""
    previous = attempt_prefix(namespace, name, uid, plan.attempt)
    ttl = context.url_ttl_seconds
    report = generation = None
    if plan.report_sha256 is not None:
        url = context.store.presign_get(previous + REPORT_SUMMARY_KEY, ttl)
        report = DocumentRef(url=url, sha256=plan.report_sha256)
    if plan.generation_sha256 is not None:
        url = context.store.presign_get(previous + GENERATION_FEEDBACK_KEY, ttl)
        generation = DocumentRef(url=url, sha256=plan.generation_sha256)
    files: list[FileRef] = []
    if plan.with_files:
        read = _read_document(context.store, previous + MANIFEST_KEY, Manifest)
        if read is not None:
            files = _file_refs(context, previous, read[0])
    return Feedback(
        attempt=plan.attempt,
        kind=plan.kind,
        message=plan.message[:4096],
        report=report,
        generation=generation,
        files=files,
    )


def _key(uri: str) -> str:
    """The object key of an s3://bucket/key URI."""
    return uri.split("/", 3)[3]


async def _active_jobs(run: GenerationRun, context: RunContext) -> list[str]:
    namespace = run.metadata.namespace or ""
    observed = await _observe_jobs(context.kube, namespace, run)
    return [
        name for name, job in observed.items() if job.state in {JobState.ACTIVE, JobState.SUSPENDED}
    ]


async def _set_suspended(run: GenerationRun, context: RunContext, *, suspend: bool) -> None:
    namespace = run.metadata.namespace or ""
    for name in await _active_jobs(run, context):
        await context.kube.merge_patch(
            f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}", {"spec": {"suspend": suspend}}
        )


async def _delete_jobs(run: GenerationRun, context: RunContext) -> None:
    namespace = run.metadata.namespace or ""
    for name in await _active_jobs(run, context):
        try:
            await context.kube.request(
                "DELETE",
                f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
                {"propagationPolicy": "Background"},
            )
        except NotFoundError:
            continue


# ---------------------------------------------------------------- status


def _write(body: kopf.Body, patch: kopf.Patch, run: GenerationRun, decision: Decision) -> None:
    """Merge-patch the keys that changed; `usage` belongs to the gateway and is never sent."""
    before = run.status.to_wire() if run.status is not None else {}
    after = decision.status.to_wire()
    before.pop("usage", None)
    after.pop("usage", None)
    for key, value in after.items():
        if before.get(key) != value:
            patch.status[key] = value
    pinned = decision.status.pinned_spec
    if pinned is not None:
        labels = body.get("metadata", {}).get("labels") or {}
        wanted = {
            "smartspec.dev/spec": pinned.name,
            "smartspec.dev/spec-revision": str(pinned.revision),
        }
        for key, value in wanted.items():
            if labels.get(key) != value:
                patch.metadata.setdefault("labels", {})[key] = value
    _observe(run, decision)


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
    was_terminal = run.status is not None and run.status.phase in {"Succeeded", "Failed"}
    if status.phase not in {"Succeeded", "Failed"} or was_terminal:
        return
    succeeded = next((c for c in status.conditions if c.type == "Succeeded"), None)
    reason = succeeded.reason if succeeded is not None else "Unknown"
    metrics.RUNS_FINISHED.labels(phase=str(status.phase), reason=reason).inc()
    metrics.RUN_ATTEMPTS.observe(status.attempt or 0)
    if status.phase == "Succeeded" and status.start_time and status.completion_time:
        metrics.TIME_TO_GREEN.observe((status.completion_time - status.start_time).total_seconds())
