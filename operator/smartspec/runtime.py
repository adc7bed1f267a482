"""The operator process: settings, logging, metrics, kopf configuration, handlers, run.

Contract: specs/CORE-002-spec-registry.md, section "Configuration".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from smartspec.api.v1alpha1.spec import KIND as SPEC_KIND
from smartspec.builders.events import REPORTING_COMPONENT
from smartspec.builders.jobs import LocalModelSettings, SandboxSettings
from smartspec.ha import run_while_leader
from smartspec.kube.client import KubeClient, load_configuration
from smartspec.kube.events import EventRecorder
from smartspec.kube.leader import LeaderElector
from smartspec.logic.leader import LeaderTimings
from smartspec.logic.retention import Lifetimes
from smartspec.logic.run_tokens import parse_token_keys
from smartspec.logic.storage_check import CheckResult, describe, failures
from smartspec.observability import metrics
from smartspec.observability.logs import configure_logging, get_logger
from smartspec.provenance import ProvenanceSettings, read_provenance_keys
from smartspec.reconcilers.budgets import BudgetContext, register_budget_handlers
from smartspec.reconcilers.retention import RetentionContext, register_retention
from smartspec.reconcilers.runs import RunContext, register_run_handlers
from smartspec.reconcilers.specs import SpecRegistryContext, register_spec_handlers
from smartspec.settings import OperatorSettings
from smartspec.storage import S3ObjectStore, StorageError
from smartspec.storage.self_check import StorageCheckError, run_self_check

# kopf keeps its bookkeeping in annotations under our own prefix; status stays ours alone.
ANNOTATION_PREFIX = "smartspec.dev"
FINALIZER = "smartspec.dev/finalizer"
LIST_PAGE_SIZE = 500
"""Objects per page when kopf lists a kind (at start and after a watch expires)."""
WORKER_IDLE_SECONDS = 0.5
CLEANUP_READ_TIMEOUT_SECONDS = 10.0
"""Read timeout of the store's list and delete calls made by the finalizer and the sweep."""
LEASE_REQUEST_SECONDS = 5.0
"""Timeout of one Lease read or write: several fit in the renew deadline."""

log = get_logger(__name__)


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """Every handler of the operator, on a fresh registry."""
    registry = kopf.OperatorRegistry()
    store = S3ObjectStore(
        settings.s3_bucket, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region
    )
    keys = read_token_keys(settings)  # first: a bad key file stops the start at once
    provenance = read_provenance_settings(settings)
    kube = KubeClient(load_configuration())
    events = EventRecorder(kube, reporting_instance=socket.gethostname())
    register_spec_handlers(
        registry,
        SpecRegistryContext(
            store=store,
            events=events,
            dependency_recheck_seconds=settings.dependency_recheck_seconds,
        ),
    )
    register_budget_handlers(registry, BudgetContext(kube=kube, events=events))
    context = build_run_context(settings, store, kube, events, keys)
    register_run_handlers(registry, dataclasses.replace(context, provenance=provenance))
    register_retention(
        registry,
        RetentionContext(
            kube=kube,
            events=events,
            store=context.cleanup_store or store,
            defaults=Lifetimes(
                succeeded_run=settings.retention_succeeded_run_seconds,
                failed_run=settings.retention_failed_run_seconds,
                artifact=settings.retention_artifact_seconds,
                transcript=settings.retention_transcript_seconds,
            ),
            sweep_seconds=settings.retention_sweep_seconds,
            orphan_grace_seconds=settings.retention_orphan_grace_seconds,
            namespaces=tuple(settings.namespaces),
            signing=provenance is not None,
        ),
    )

    # A fresh registry has none of kopf's default login handlers; use kopf's own in-cluster
    # and kubeconfig readers (no client library involved, so nothing else can shadow them).
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = kopf.login_with_service_account(**kwargs)
        if info is None:
            return kopf.login_with_kubeconfig(**kwargs)
        # kopf names https://kubernetes.default.svc, which needs cluster DNS; the kubelet's
        # KUBERNETES_SERVICE_HOST/PORT are what client-go (and our own client) use.
        host, port = (
            os.environ.get("KUBERNETES_SERVICE_HOST"),
            os.environ.get("KUBERNETES_SERVICE_PORT"),
        )
        if host and port:
            info = dataclasses.replace(info, server=f"https://{host}:{port}")
        return info

    @kopf.on.cleanup(registry=registry)
    async def close_clients(**_: Any) -> None:
        await kube.close()  # its connections, before the loop that owns them ends

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=ANNOTATION_PREFIX
        )
        settings.persistence.diffbase_storage = SpecDiffBaseStorage(
            prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
        )
        settings.persistence.finalizer = FINALIZER
        # The reconcilers post their own Events, once per transition; kopf posts only its
        # handler failures, under the operator's name.
        settings.posting.level = logging.WARNING
        settings.posting.reporting_component = REPORTING_COMPONENT
        settings.posting.reporting_instance = socket.gethostname()
        settings.watching.server_timeout = 300
        # Lists in pages: one unpaged list of every run parses them all at once, and the
        # heap it grows to stays (measured with 10,000 runs: 300 MiB unpaged, 237 MiB paged).
        settings.watching.chunk_size = LIST_PAGE_SIZE
        # kopf keeps a worker task per object until it has been idle this long: at start
        # every listed run has one at once, and the heap they need stays.
        settings.batching.idle_timeout = WORKER_IDLE_SECONDS
        settings.networking.request_timeout = 60

    return registry


class SpecDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf builds every event's diff base (a deep copy of the object), for any kind; only
    Specs have create and update handlers that read it. Measured: 9 % of the operator's
    CPU in a burst of runs (CORE-004 "Scale")."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        if body.get("kind") not in {SPEC_KIND, None}:
            return cast("kopf.BodyEssence", {})
        return super().build(body=body, extra_fields=extra_fields)


def read_token_keys(settings: OperatorSettings) -> tuple[bytes, ...]:
    """The run-token keys (none without a key file: llm runs then wait for them)."""
    if settings.token_keys_file is None:
        return ()
    # The gateway parses the same file with the same function: both refuse a bad one.
    text = settings.token_keys_file.read_text(encoding="utf-8")
    return parse_token_keys(text, str(settings.token_keys_file))


def read_provenance_settings(settings: OperatorSettings) -> ProvenanceSettings | None:
    """The attestation keys (CORE-005); None without a key file: runs are not attested."""
    if settings.provenance_keys_file is None:
        log.warning("No SMARTSPEC_PROVENANCE_KEYS_FILE: finished runs will not be attested")
        return None
    ring = read_provenance_keys(settings.provenance_keys_file)
    log.info("Provenance keys loaded", key_id=ring.signing.key_id, keys=len(ring.keys))
    return ProvenanceSettings(keys=ring, builder_id=settings.provenance_builder_id)


def build_run_context(
    settings: OperatorSettings,
    store: S3ObjectStore,
    kube: KubeClient,
    events: EventRecorder,
    keys: tuple[bytes, ...],
) -> RunContext:
    """Clients and sandbox settings of the run reconciler, from the operator settings."""
    return RunContext(
        kube=kube,
        events=events,
        store=store,
        sandbox=SandboxSettings(
            generator_image=settings.generator_image,
            tester_image=settings.tester_image,
            s3_egress=settings.s3_egress,
            runtime_class_name=settings.runtime_class_name,
            gateway_namespace=settings.gateway_namespace,
            agent_images=tuple(settings.agent_images),
            local_models={
                name: LocalModelSettings(model=name, **config)
                for name, config in settings.local_models.items()
            },
        ),
        token_keys=keys,
        gateway_base_url=settings.gateway_url,
        url_ttl_seconds=settings.url_ttl_seconds,
        resync_seconds=settings.run_resync_seconds,
        workers=settings.run_workers,
        # Deletions must fail fast when the store does not answer: the finalizer retries
        # with backoff, and a namespace's deletion waits on it.
        cleanup_store=S3ObjectStore(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            max_attempts=2,
            read_timeout_seconds=CLEANUP_READ_TIMEOUT_SECONDS,
            credentials_file=settings.retention_s3_credentials_file,
        ),
        finalizer_timeout_seconds=settings.retention_finalizer_timeout_seconds,
    )


def check_storage(settings: OperatorSettings) -> None:
    """The storage self-check (CORE-004): a failure stops the start, or is logged (`warn`)."""
    store = S3ObjectStore(
        settings.s3_bucket, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region
    )
    try:
        results = run_self_check(store)
    except StorageError as error:
        results = [CheckResult("reachable", False, str(error))]
    failed = failures(results)
    if not failed:
        log.info("Storage self-check passed", bucket=settings.s3_bucket, checks=len(results))
        return
    lines = describe(failed)
    if settings.s3_self_check == "enforce":
        log.error("Storage self-check failed", bucket=settings.s3_bucket, failed=lines)
        raise StorageCheckError("; ".join(lines))
    log.warning("Storage self-check failed (SMARTSPEC_S3_SELF_CHECK=warn)", failed=lines)


def run_operator(settings: OperatorSettings) -> None:
    """Run until SIGTERM/SIGINT; StorageCheckError when the bucket fails the self-check."""
    configure_logging(settings.log_level)
    registry = build_registry(settings)  # local configuration errors first, then the probes
    check_storage(settings)
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    log.info(
        "Starting operator",
        namespaces=settings.namespaces or "all",
        bucket=settings.s3_bucket,
        leader_election=settings.leader_election_namespace or "off",
    )
    # kopf's peering only pauses lower-priority peers; the Lease decides who runs at all.
    operate = functools.partial(
        kopf.operator,
        registry=registry,
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=(
            f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
        ),
    )
    if settings.leader_election_namespace is None:
        metrics.OPERATOR_LEADER.set(1)  # the only replica there may be
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(operate())
        return
    asyncio.run(
        run_elected(
            settings.leader_election_namespace,
            settings.leader_election_lease,
            settings.liveness_port,
            operate,
        )
    )


async def run_elected(
    namespace: str, lease: str, liveness_port: int, operate: Callable[[], Awaitable[None]]
) -> None:
    """Stand by for the leader-election Lease `namespace/lease`, then operate while holding it."""
    async with KubeClient(load_configuration(), timeout_seconds=LEASE_REQUEST_SECONDS) as kube:
        elector = LeaderElector(
            kube,
            namespace=namespace,
            name=lease,
            identity=f"{socket.gethostname()}_{uuid.uuid4().hex[:12]}",
            timings=LeaderTimings(),
        )
        await run_while_leader(elector, operate, liveness_port)
