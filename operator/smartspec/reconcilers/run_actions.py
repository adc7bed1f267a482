"""Act for the GenerationRun reconciler: create a step's Job with its instructions Secret and
NetworkPolicies, suspend, resume or delete Jobs.

Contract: specs/CORE-004-generation-runs.md, sections "Sandbox Jobs" and "Reconciler".

Every object is created by its deterministic name; one that exists is adopted, never
duplicated, so acting twice on one decision is harmless. Presigning and reading S3 happen in
a worker thread (boto3 blocks).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from smartspec.api.sandbox import (
    FILES_PREFIX,
    GENERATION_FEEDBACK_KEY,
    MANIFEST_KEY,
    REPORT_SUMMARY_KEY,
    DocumentRef,
    Feedback,
    FileRef,
    Manifest,
)
from smartspec.api.v1alpha1.generationrun import GenerationRun
from smartspec.builders.instructions import build_generator_instructions, build_tester_instructions
from smartspec.builders.jobs import (
    SandboxRole,
    build_generator_job,
    build_instructions_secret,
    build_network_policies,
    build_test_job,
    instructions_secret_name,
)
from smartspec.kube.client import ConflictError, KubeClient, NotFoundError
from smartspec.logic.object_keys import attempt_prefix
from smartspec.logic.run_machine import (
    Action,
    ActionKind,
    Decision,
    FeedbackPlan,
    JobState,
    feedback_plan,
)
from smartspec.logic.run_tokens import RunTokenClaims, mint_run_token
from smartspec.observability.logs import get_logger
from smartspec.storage import StorageError

from .run_context import RetryLater, RunContext
from .run_observe import observe_jobs, read_document

__all__ = ["act"]

log = get_logger(__name__)


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
    token = None
    if run.spec.generator.backend.calls_models:
        if not context.token_keys:
            # Admitted by an operator that had keys; wait for one that has them again.
            raise RetryLater("the operator has no run-token keys (SMARTSPEC_TOKEN_KEYS_FILE)", 60)
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
    plan = feedback_plan(decision.status, attempt)

    def instructions_document() -> bytes:
        # Presigning and reading the previous manifest are boto3 calls: a worker thread's.
        prefix = attempt_prefix(namespace, name, uid, attempt)
        ttl = context.url_ttl_seconds
        return build_generator_instructions(
            run,
            attempt,
            pinned,
            snapshot_url=context.store.presign_get(_key(pinned.snapshot_uri), ttl),
            upload=context.store.presign_upload(prefix, ttl),
            feedback=_feedback(run, plan, context) if plan is not None else None,
            gateway_base_url=context.gateway_base_url,
            token=token,
        )

    instructions = await asyncio.to_thread(instructions_document)
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
        gateway_base_url=context.gateway_base_url,
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

    def instructions_document() -> bytes:
        prefix = attempt_prefix(namespace, name, uid, attempt)
        read = read_document(context.store, prefix + MANIFEST_KEY, Manifest)
        if read is None:
            raise StorageError(f"the manifest of attempt {attempt} is missing")
        manifest, digest = read
        ttl = context.url_ttl_seconds
        return build_tester_instructions(
            run,
            attempt,
            pinned,
            snapshot_url=context.store.presign_get(_key(pinned.snapshot_uri), ttl),
            manifest_url=context.store.presign_get(prefix + MANIFEST_KEY, ttl),
            manifest_sha256=digest,
            files=_file_refs(context, prefix, manifest),
            upload=context.store.presign_upload(prefix, ttl),
            timeout_seconds=max(60, run.spec.timeouts.attempt_seconds // 2),
        )

    instructions = await asyncio.to_thread(instructions_document)
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
        read = read_document(context.store, previous + MANIFEST_KEY, Manifest)
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
    observed = await observe_jobs(context.kube, namespace, run)
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
