"""Gather for the GenerationRun reconciler: the Spec, the budget, the run's Jobs and Pods,
and what the current attempt's sandboxes left in S3.

Contract: specs/CORE-004-generation-runs.md, section "Reconciler".

Reads only: every API read goes through the async client, every S3 read to a worker thread
(boto3 blocks), so a slow read never stalls other runs' reconciles.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TypeVar

from pydantic import ValidationError

from smartspec.api.sandbox import (
    FILES_PREFIX,
    MANIFEST_KEY,
    REPORT_SUMMARY_KEY,
    SESSION_FAILURE,
    Manifest,
    TestReport,
    parse_result_line,
)
from smartspec.api.v1alpha1 import GROUP, VERSION
from smartspec.api.v1alpha1.creditbudget import CreditBudget
from smartspec.api.v1alpha1.generationrun import FailureKind, GenerationRun
from smartspec.builders.agent_job import AGENT_CONTAINER
from smartspec.builders.jobs import LABEL_RUN_UID, agent_image_allowed, local_model_for
from smartspec.kube.client import KubeClient, NotFoundError
from smartspec.logic.budget import model_allowed
from smartspec.logic.naming import generator_job_name, test_job_name
from smartspec.logic.object_keys import attempt_prefix
from smartspec.logic.run_machine import (
    OOM_KILLED,
    BudgetObservation,
    JobObservation,
    JobState,
    ManifestObservation,
    Observations,
    ReportObservation,
    SpecObservation,
)
from smartspec.logic.spec_lint import known_spec
from smartspec.observability.logs import get_logger
from smartspec.storage import ObjectMissingError, S3ObjectStore

from .run_context import RunContext

__all__ = ["gather", "observe_jobs", "read_document"]

API = f"/apis/{GROUP}/{VERSION}"
log = get_logger(__name__)


async def gather(run: GenerationRun, context: RunContext) -> Observations:
    namespace = run.metadata.namespace or ""
    local = local_model_for(run, context.sandbox)
    agent = run.spec.generator.agent
    observations = Observations(
        spec=None,
        budget=None,
        jobs={},
        local_model_port=local.port if local is not None else None,
        run_tokens_configured=bool(context.token_keys),
        agent_image_allowed=agent is None or agent_image_allowed(agent.image, context.sandbox),
    )
    status = run.status
    if status is None or status.pinned_spec is None:
        # Only admission reads the Spec and the budget; no Job exists before it (one that
        # a crash left behind is adopted when it is created again).
        observations.spec, observations.budget = await asyncio.gather(
            _observe_spec(context.kube, namespace, run.spec.spec_ref.name),
            _observe_budget(context.kube, namespace, run),
        )
        return observations
    observations.jobs = await observe_jobs(context.kube, namespace, run)
    if status.attempt is None:
        return observations
    # Only the current attempt's documents decide anything; earlier ones were read when
    # they were current.
    number = status.attempt
    prefix = attempt_prefix(namespace, run.metadata.name, run.metadata.uid or "", number)
    gen = observations.jobs.get(generator_job_name(run.metadata.name, number))
    if gen is not None and gen.state is JobState.SUCCEEDED:
        manifest = await asyncio.to_thread(_read_manifest, context.store, prefix)
        if manifest is not None:
            observations.generator_results[number] = manifest
    test = observations.jobs.get(test_job_name(run.metadata.name, number))
    if test is not None and test.state in {JobState.SUCCEEDED, JobState.FAILED}:
        report = await asyncio.to_thread(_read_report, context.store, prefix)
        if report is not None:
            observations.test_results[number] = report
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
    if not run.spec.generator.backend.calls_models:
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


async def observe_jobs(
    kube: KubeClient, namespace: str, run: GenerationRun
) -> dict[str, JobObservation]:
    selector = {"labelSelector": f"{LABEL_RUN_UID}={run.metadata.uid}"}
    jobs = await kube.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs", query=selector)
    pods = await kube.request("GET", f"/api/v1/namespaces/{namespace}/pods", query=selector)
    terminated: dict[str, Mapping[str, Any]] = {}
    pod_ips: dict[str, str] = {}
    for pod in pods.get("items", []):
        job = (pod.get("metadata", {}).get("labels") or {}).get("job-name")
        status = pod.get("status") or {}
        if job and status.get("phase") == "Running" and status.get("podIP"):
            pod_ips[job] = status["podIP"]
        state = _terminated(status)
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


def _terminated(pod_status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The state that says how a sandbox pod ended: its main container's, else that of an
    init container that failed (an agent pod's prepare step, or the agent's launcher)."""
    for container in pod_status.get("containerStatuses") or []:
        state = (container.get("state") or {}).get("terminated")
        if state:
            return dict(state)
    for container in pod_status.get("initContainerStatuses") or []:
        state = (container.get("state") or {}).get("terminated")
        if state and state.get("exitCode") not in (0, None):
            return {**state, "container": container.get("name")}
    return None


def sandbox_state(kind: str, body: Mapping[str, Any]) -> str:
    """What of a sandbox Job or Pod `observe_jobs` turns into a decision: a Job's end or
    suspension, a Pod's phase and its IP (a local model's endpoint)."""
    status = body.get("status") or {}
    if kind == "Pod":
        ip = status.get("podIP", "") if status.get("phase") == "Running" else ""
        return f"Pod:{status.get('phase') or 'Pending'}:{ip}"
    return f"Job:{_job_observation(body, None).state.value}"


CREATED_STATE = {"Job": "Job:Active", "Pod": "Pod:Pending:"}
"""The state of a Job or Pod as created: its first event (ours) carries no news."""
FINISHED_STATES = frozenset({"Job:Succeeded", "Job:Failed", "Pod:Succeeded:", "Pod:Failed:"})


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
        kind = detail.kind if detail else None
        if kind is None and pod_state and pod_state.get("container") == AGENT_CONTAINER:
            # The launcher itself was killed: finish never ran to say more.
            kind = FailureKind.AGENT_FAILED
            message = f"the agent container ended with exit code {exit_code} before finish ran"
        return JobObservation(
            JobState.FAILED,
            exit_code=exit_code,
            reason=reason,
            message=message,
            refusal=detail.refusal if detail else None,
            failure_kind=kind,
            feedback_sha256=detail.feedback_sha256 if detail else None,
        )
    if (job.get("spec") or {}).get("suspend"):
        return JobObservation(JobState.SUSPENDED)
    return JobObservation(JobState.ACTIVE)


_ModelT = TypeVar("_ModelT", Manifest, TestReport)


def read_document(
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
    read = read_document(store, prefix + MANIFEST_KEY, Manifest)
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
    read = read_document(store, prefix + REPORT_SUMMARY_KEY, TestReport)
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
