"""Faults on purpose: the S3 server hangs for 30 s at each phase of a batch of runs, and no run
fails for it, no ledger entry is lost or doubled.

Contract: specs/CORE-004-generation-runs.md, section "Faults". The server is frozen
(SIGSTOP), not stopped: connections are accepted and never answered, the harder case for
clients, which must time out and retry instead of failing fast. llm runs call the local stub
model through the gateway: the pipeline under faults, never model quality.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from testcluster.faults import TERMINAL, check_invariants, count_jobs, phases, post_runs
from testcluster.harness import GatewayProcess, OperatorProcess, wait_for
from testcluster.plugin import Cluster
from testcluster.runs import API, example, operator_env
from testcluster.s3 import S3Endpoint, S3Server

pytestmark = [pytest.mark.integration, pytest.mark.faults]

OUTAGE_SECONDS = 30


def test_runs_outlast_a_hung_object_store_at_every_phase(
    cluster: Cluster,
    tenant: str,
    faulty: GatewayProcess,
    start_operator: Callable[..., OperatorProcess],
    s3: S3Endpoint,
    s3_server: S3Server,
    tmp_path: Path,
) -> None:
    """Outages: (1) while a new Spec revision is snapshotted, (2) while generators upload and
    the gateway writes transcripts and ledger segments, (3) while testers upload their
    reports. Invariants as `check_invariants`: every run Succeeded, nothing duplicated or
    orphaned, credits equal to the ledger, which verifies."""
    start_operator(tenant, **operator_env(tmp_path, gateway_url=f"{faulty.url}/v1"))
    admin = cluster.rest("admin")
    builder = cluster.rest("builder")
    timeline: list[str] = []
    started = time.monotonic()

    def outage(phase: str) -> None:
        with s3_server.frozen():
            time.sleep(OUTAGE_SECONDS)
        timeline.append(f"{time.monotonic() - started:6.1f} s: S3 back after {phase}")

    revised = example("spec.yaml")
    revised["metadata"]["name"] = "todo-api-revised"
    builder.post(f"{API}/{tenant}/specs", revised)
    outage("(1) a Spec's snapshot")
    names = post_runs(cluster, tenant, builtin=6, llm=3)
    wait_for(lambda: count_jobs(admin, tenant) >= 9, "every generator Job")
    outage("(2) generators and model calls")

    def testing() -> bool:
        jobs = admin.get(f"/apis/batch/v1/namespaces/{tenant}/jobs")["items"]
        return any("-test-" in job["metadata"]["name"] for job in jobs)

    wait_for(testing, "a test Job", timeout=300)
    outage("(3) testers")

    def all_finished() -> bool:
        return all(phase in TERMINAL for phase in phases(admin, tenant).values())

    wait_for(all_finished, "every run to finish", timeout=600, interval=2)
    timeline.append(f"{time.monotonic() - started:6.1f} s: all {len(names)} runs finished")
    print("\n".join(timeline))
    status = admin.get(f"{API}/{tenant}/specs/todo-api-revised")["status"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "SnapshotStored"), ready
    check_invariants(cluster, tenant, names, s3, faulty)
