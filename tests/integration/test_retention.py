"""Retention against the real API server and the real S3 server (SeaweedFS).

Contract: specs/CORE-001-resources.md, section "Retention". Runs past their lifetime go
with their files while the ledger and attestations stay; GitOps-managed and `keep` runs
stay; a hung store delays a deletion (a namespace's too) but never hangs it, and what is
left behind is swept once the store answers. llm runs call the local stub model through
the gateway: canned answers test the plumbing, never model quality.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smartspec.logic.object_keys import run_prefix, transcripts_prefix
from smartspec.logic.provenance import attestation_key
from testcluster.faults import post_runs
from testcluster.gateway_calls import ledger_entries, settled, verify_ledger
from testcluster.harness import GatewayProcess, OperatorProcess, wait_for
from testcluster.plugin import Cluster
from testcluster.rest import ApiException, Rest
from testcluster.runs import API, example, finished, operator_env, wait_for_attestations
from testcluster.s3 import S3Endpoint, S3Server

pytestmark = pytest.mark.integration

SWEEP_SECONDS = 2
FAST_SWEEP = {
    "SMARTSPEC_RETENTION_SWEEP_SECONDS": str(SWEEP_SECONDS),
    "SMARTSPEC_RETENTION_ORPHAN_GRACE_SECONDS": "0",
}


def keys_under(s3_client: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def set_retention(cluster: Cluster, namespace: str, **policy: int) -> None:
    cluster.rest("platform_admin").patch(
        f"{API}/{namespace}/creditbudgets/default", {"spec": {"retention": policy}}
    )


def runs_left(admin: Rest, namespace: str) -> dict[str, dict[str, Any]]:
    items = admin.get(f"{API}/{namespace}/generationruns")["items"]
    return {run["metadata"]["name"]: run for run in items}


def run_files(s3_client: Any, s3: S3Endpoint, run: dict[str, Any]) -> list[str]:
    metadata = run["metadata"]
    prefix = run_prefix(metadata["namespace"], metadata["name"], metadata["uid"])
    return keys_under(s3_client, s3.bucket, prefix)


def only_attestation(run: dict[str, Any]) -> list[str]:
    metadata = run["metadata"]
    return [attestation_key(metadata["namespace"], metadata["name"], metadata["uid"])]


def condition(run: dict[str, Any], kind: str) -> dict[str, Any] | None:
    conditions = (run.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), None)


def post_builtin(cluster: Cluster, namespace: str, name: str, **metadata: Any) -> None:
    run = example("generationrun-builtin.yaml")
    run["metadata"] = {"name": name, **metadata}
    cluster.rest("builder").post(f"{API}/{namespace}/generationruns", run)


def finished_and_signed(admin: Rest, namespace: str, names: list[str]) -> dict[str, Any]:
    for name in names:
        finished(admin, namespace, name)
    wait_for_attestations(admin, namespace)
    return runs_left(admin, namespace)


def test_runs_past_their_retention_go_with_their_files_and_the_ledger_still_verifies(
    cluster: Cluster,
    tenant: str,
    faulty: GatewayProcess,
    start_operator: Callable[..., OperatorProcess],
    s3: S3Endpoint,
    s3_client: Any,
    tmp_path: Path,
) -> None:
    """A builtin and an llm run finish and are signed; the admin sets every lifetime to 0:
    both runs disappear with every file but their attestations, the transcripts go, and the
    ledger keeps every entry, verifies, and still sums to spentCredits."""
    env = operator_env(tmp_path, gateway_url=f"{faulty.url}/v1")
    start_operator(tenant, **env, **FAST_SWEEP)
    admin = cluster.rest("admin")
    names = post_runs(cluster, tenant, builtin=1, llm=1)
    runs = finished_and_signed(admin, tenant, names)
    for run in runs.values():
        assert len(run_files(s3_client, s3, run)) > 3, "files, manifest, report, attestation"
    assert keys_under(s3_client, s3.bucket, transcripts_prefix(tenant)), "the llm run's calls"
    spent_before = settled(admin, tenant)["spentCredits"]
    entries_before = ledger_entries(s3, admin, tenant)
    assert spent_before > 0
    assert runs_left(admin, tenant), "nothing is deleted before a policy says so"

    set_retention(cluster, tenant, succeededRunSeconds=0, failedRunSeconds=0, transcriptSeconds=0)
    wait_for(lambda: not runs_left(admin, tenant), "retention to delete both runs", timeout=60)
    for run in runs.values():
        assert run_files(s3_client, s3, run) == only_attestation(run)
    assert keys_under(s3_client, s3.bucket, transcripts_prefix(tenant)) == []
    assert settled(admin, tenant)["spentCredits"] == spent_before
    entries_after = ledger_entries(s3, admin, tenant)
    assert [e.sequence for e in entries_after] == [e.sequence for e in entries_before]
    charged = sum(e.credits for e in entries_after if e.kind == "settle")
    assert charged == spent_before
    verify_ledger(cluster, tenant, faulty)
    events = admin.get(f"/api/v1/namespaces/{tenant}/events")["items"]
    expired = {e["involvedObject"]["name"] for e in events if e["reason"] == "RetentionExpired"}
    assert expired == set(names)


def test_gitops_and_kept_runs_stay_while_their_files_age_out(
    cluster: Cluster,
    tenant: str,
    faulty: GatewayProcess,
    start_operator: Callable[..., OperatorProcess],
    s3: S3Endpoint,
    s3_client: Any,
    tmp_path: Path,
) -> None:
    """A run tracked by Argo CD (annotation), one by label, one marked `keep`, and a plain
    one; runs and files live 0 s: the plain run goes, the others stay (Argo CD would
    re-apply them, spending again) with their files deleted and said so in status."""
    start_operator(tenant, **operator_env(tmp_path), **FAST_SWEEP)
    admin = cluster.rest("admin")
    post_builtin(cluster, tenant, "plain")
    tracking = {"argocd.argoproj.io/tracking-id": "runs:smartspec.dev/GenerationRun:t/x"}
    post_builtin(cluster, tenant, "tracked", annotations=tracking)
    post_builtin(cluster, tenant, "labelled", labels={"app.kubernetes.io/instance": "runs"})
    post_builtin(cluster, tenant, "kept", annotations={"smartspec.dev/retention": "keep"})
    runs = finished_and_signed(admin, tenant, ["plain", "tracked", "labelled", "kept"])

    set_retention(cluster, tenant, succeededRunSeconds=0, failedRunSeconds=0, artifactSeconds=0)
    wait_for(lambda: "plain" not in runs_left(admin, tenant), "the plain run to go", timeout=60)
    exempt = ["tracked", "labelled", "kept"]

    def files_gone() -> bool:
        left = runs_left(admin, tenant)
        return all((left[name].get("status") or {}).get("retention") for name in exempt)

    wait_for(files_gone, "the exempt runs' files to be deleted", timeout=60)
    time.sleep(3 * SWEEP_SECONDS)  # more sweeps: still kept
    left = runs_left(admin, tenant)
    assert sorted(left) == sorted(exempt)
    for name in exempt:
        run = left[name]
        assert run["metadata"]["uid"] == runs[name]["metadata"]["uid"], "never re-created"
        retention = run["status"]["retention"]
        assert retention["objectsDeleted"] > 0
        assert retention["bytesDeleted"] > 0
        deleted = condition(run, "ArtifactsDeleted")
        assert deleted is not None
        assert deleted["status"] == "True"
        assert deleted["reason"] == "RetentionExpired"
        assert run_files(s3_client, s3, run) == only_attestation(run)
        assert run["status"]["evidence"]["reportUri"], "the digests stay for the auditor"
    assert run_files(s3_client, s3, runs["plain"]) == only_attestation(runs["plain"])


def test_a_hung_store_delays_a_namespace_deletion_but_never_hangs_it(
    cluster: Cluster,
    tenant: str,
    faulty: GatewayProcess,
    start_operator: Callable[..., OperatorProcess],
    s3: S3Endpoint,
    s3_server: S3Server,
    s3_client: Any,
    tmp_path: Path,
) -> None:
    """The namespace is deleted while the store hangs (SIGSTOP: connections accepted, never
    answered): the finalizer retries (DeleteFailed), lets the run go at its deadline, the
    namespace disappears, and once the store answers the sweep deletes the files left."""
    timeout_seconds = 30
    start_operator(
        tenant,
        **operator_env(tmp_path),
        **FAST_SWEEP,
        SMARTSPEC_RETENTION_FINALIZER_TIMEOUT_SECONDS=str(timeout_seconds),
    )
    admin = cluster.rest("admin")
    post_builtin(cluster, tenant, "doomed")
    run = finished_and_signed(admin, tenant, ["doomed"])["doomed"]
    assert "smartspec.dev/artifacts" in run["metadata"]["finalizers"]
    assert len(run_files(s3_client, s3, run)) > 3
    seen: list[str] = []

    def namespace_gone() -> bool:
        try:
            left = runs_left(admin, tenant).get("doomed")
            if left is not None and (found := condition(left, "ArtifactsDeleted")):
                seen.append(found["reason"])
            admin.get(f"/api/v1/namespaces/{tenant}")
        except ApiException as error:
            return bool(error.status == 404)
        return False

    with s3_server.frozen():
        started = time.monotonic()
        admin.delete(f"/api/v1/namespaces/{tenant}")
        wait_for(namespace_gone, "the namespace to be deleted", timeout=180, interval=1)
        took = time.monotonic() - started
    print(f"namespace deleted {took:.1f} s after the request, store hung throughout")
    assert took >= timeout_seconds, "the finalizer waited for the store until its deadline"
    assert "DeleteFailed" in seen, seen
    wait_for(
        lambda: run_files(s3_client, s3, run) == only_attestation(run),
        "the sweep to delete the files the deleted run left",
        timeout=120,
    )


def test_an_admin_can_force_a_stuck_deletion(
    cluster: Cluster,
    tenant: str,
    faulty: GatewayProcess,
    start_operator: Callable[..., OperatorProcess],
    s3: S3Endpoint,
    s3_server: S3Server,
    s3_client: Any,
    tmp_path: Path,
) -> None:
    """With a 10-minute finalizer deadline and a hung store, the run waits (DeleteFailed)
    until the admin sets smartspec.dev/force-finalizer-removal; then it goes at once,
    `Abandoned`, and the sweep deletes its files after the store is back."""
    operator = start_operator(tenant, **operator_env(tmp_path), **FAST_SWEEP)
    admin = cluster.rest("admin")
    post_builtin(cluster, tenant, "stuck")
    run = finished_and_signed(admin, tenant, ["stuck"])["stuck"]
    path = f"{API}/{tenant}/generationruns/stuck"
    with s3_server.frozen():
        admin.delete(path)

        def retrying() -> bool:
            found = condition(admin.get(path), "ArtifactsDeleted")
            return found is not None and found["reason"] == "DeleteFailed"

        wait_for(retrying, "the finalizer to report DeleteFailed", timeout=90, interval=1)
        assert "stuck" in runs_left(admin, tenant), "no deadline passed: it waits"
        annotations = {"smartspec.dev/force-finalizer-removal": "true"}
        admin.patch(path, {"metadata": {"annotations": annotations}})
        wait_for(lambda: "stuck" not in runs_left(admin, tenant), "the forced run to go", 90)
    abandoned = operator.metric("smartspec_retention_abandoned_total", why="forced")
    assert abandoned == 1
    wait_for(
        lambda: run_files(s3_client, s3, run) == only_attestation(run),
        "the sweep to delete the forced run's files",
        timeout=120,
    )
