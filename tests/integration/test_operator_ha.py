"""Two operator replicas: one elected through a Lease reconciles, the other stands by and takes
over when the active one dies, without a second Job, Secret or attempt.

Contract: specs/CORE-004-generation-runs.md, section "High availability". Runs on the real
API server and node; the operators hold exactly the operator's RBAC, with the leader-election
role bound in the Lease's namespace only.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smartspec.ha import LEADERSHIP_LOST_EXIT_CODE
from testcluster.harness import OperatorProcess, wait_for
from testcluster.localnode import LocalNode
from testcluster.plugin import Cluster
from testcluster.rest import Rest
from testcluster.runs import API, bind_leader_election, example, finished, operator_env

pytestmark = pytest.mark.integration

LEASE = "smartspec-operator"


def elected_env(tmp_path: Path, namespace: str) -> dict[str, str]:
    return {
        **operator_env(tmp_path),
        "SMARTSPEC_LEADER_ELECTION_NAMESPACE": namespace,
        "SMARTSPEC_LEADER_ELECTION_LEASE": LEASE,
    }


def lease(rest: Rest, namespace: str) -> dict[str, Any]:
    spec: dict[str, Any] = rest.get(
        f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}"
    )["spec"]
    return spec


def is_leader(process: OperatorProcess) -> bool:
    return process.metric("smartspec_operator_leader") == 1


def reconciles(process: OperatorProcess) -> float:
    return sum(
        process.metric("smartspec_reconciles_total", kind=kind, outcome=outcome)
        for kind in ("Spec", "GenerationRun", "CreditBudget")
        for outcome in ("ok", "retry", "invalid", "error")
    )


def test_a_standby_takes_over_a_killed_leader_and_the_run_gets_one_job_per_step(
    cluster: Cluster,
    tenant: str,
    local_node: LocalNode,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    admin = cluster.rest("admin")
    bind_leader_election(admin, tenant)
    first = start_operator(tenant, **elected_env(tmp_path, tenant))
    wait_for(lambda: is_leader(first), "the first replica to be elected")
    second = start_operator(tenant, **elected_env(tmp_path, tenant))
    wait_for(lambda: "Standing by" in second.log(), "the second replica to stand by")

    builder = cluster.rest("builder")
    builder.post(f"{API}/{tenant}/specs", example("spec.yaml"))
    builder.post(f"{API}/{tenant}/generationruns", example("generationrun-builtin.yaml"))
    jobs_path = f"/apis/batch/v1/namespaces/{tenant}/jobs"

    def job_names() -> list[str]:
        return sorted(job["metadata"]["name"] for job in admin.get(jobs_path)["items"])

    wait_for(lambda: "todo-api-builtin-gen-1" in job_names(), "the generator Job")
    assert not is_leader(second)
    assert reconciles(second) == 0, "a standby reconciled"
    term = lease(admin, tenant)
    killed_at = time.monotonic()
    assert first.stop(signal.SIGKILL) != 0  # the active replica dies mid-run

    wait_for(lambda: is_leader(second), "the standby to take over", timeout=60)
    print(f"takeover after SIGKILL: {time.monotonic() - killed_at:.1f} s")
    status = finished(admin, tenant, "todo-api-builtin")
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    assert [a["number"] for a in status["attempts"]] == [1]
    assert job_names() == ["todo-api-builtin-gen-1", "todo-api-builtin-test-1"]
    secrets = admin.get(f"/api/v1/namespaces/{tenant}/secrets")["items"]
    owned = sorted(
        s["metadata"]["name"] for s in secrets if s["metadata"]["name"].startswith("todo-api")
    )
    assert owned == ["todo-api-builtin-gen-1", "todo-api-builtin-test-1"]
    taken = lease(admin, tenant)
    assert taken["holderIdentity"] != term["holderIdentity"]
    assert taken["leaseTransitions"] == term["leaseTransitions"] + 1


def test_a_leader_stopped_cleanly_hands_the_lease_over(
    cluster: Cluster,
    tenant: str,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    admin = cluster.rest("admin")
    bind_leader_election(admin, tenant)
    first = start_operator(tenant, **elected_env(tmp_path, tenant))
    wait_for(lambda: is_leader(first), "the first replica to be elected")
    second = start_operator(tenant, **elected_env(tmp_path, tenant))
    wait_for(lambda: "Standing by" in second.log(), "the second replica to stand by")
    held = lease(admin, tenant)["holderIdentity"]

    stopped_at = time.monotonic()
    assert first.stop(signal.SIGTERM) == 0
    # Released on the way out (no holder, or already the standby): no waiting the lease out.
    assert lease(admin, tenant).get("holderIdentity") != held
    wait_for(lambda: is_leader(second), "the standby to take over")
    print(f"takeover after SIGTERM: {time.monotonic() - stopped_at:.1f} s")
    released = [r for r in first.log_records() if r.get("event") == "Lease released"]
    assert released, first.log()[-3000:]


def test_a_leader_whose_lease_is_taken_stops_at_once(
    cluster: Cluster,
    tenant: str,
    start_operator: Callable[..., OperatorProcess],
    tmp_path: Path,
) -> None:
    admin = cluster.rest("admin")
    bind_leader_election(admin, tenant)
    leader = start_operator(tenant, **elected_env(tmp_path, tenant))
    wait_for(lambda: is_leader(leader), "the replica to be elected")
    path = f"/apis/coordination.k8s.io/v1/namespaces/{tenant}/leases/{LEASE}"
    body = admin.get(path)
    body["spec"]["holderIdentity"] = "another-replica"
    admin.put(path, body)  # e.g. it was partitioned away past its deadline and lost the Lease

    wait_for(lambda: not leader.running, "the replica that lost the Lease to exit")
    assert leader.stop() == LEADERSHIP_LOST_EXIT_CODE
    records = leader.log_records()
    lost = [r for r in records if r.get("event") == "Leadership lost: stopping at once"]
    assert lost, leader.log()[-3000:]
    assert "held by another replica" in lost[0]["error"]
