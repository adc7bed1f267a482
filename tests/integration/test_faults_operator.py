"""Faults on purpose: the operator is killed (SIGKILL) at random moments while 50 runs go
through the real node, and nothing is duplicated, lost or overspent.

Contract: specs/CORE-004-generation-runs.md, sections "Reconciler" and "High availability".
Each test names the invariants it checks (`check_invariants`). The kill moments come from a
seeded generator; the seed is printed (`SMARTSPEC_FAULT_SEED` replays one). llm runs call the
local OpenAI-compatible stub through the gateway, answering every call with the canned
correct project: this tests the pipeline under faults, never model quality.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from testcluster.faults import (
    TERMINAL,
    KillLog,
    check_invariants,
    count_jobs,
    fault_seed,
    phases,
    post_runs,
)
from testcluster.harness import GatewayProcess, OperatorProcess, wait_for
from testcluster.localnode import LocalNode
from testcluster.plugin import Cluster
from testcluster.realnode import RealNode
from testcluster.runs import bind_leader_election, operator_env
from testcluster.s3 import S3Endpoint

pytestmark = [pytest.mark.integration, pytest.mark.faults]

BUILTIN_RUNS = 35
LLM_RUNS = 15


def test_an_operator_killed_at_random_moments_duplicates_and_loses_nothing(
    cluster: Cluster,
    tenant: str,
    faulty: GatewayProcess,
    start_operator: Callable[..., OperatorProcess],
    s3: S3Endpoint,
    tmp_path: Path,
) -> None:
    rng = random.Random(fault_seed())  # noqa: S311 (kill moments, not secrets)
    env = operator_env(tmp_path, gateway_url=f"{faulty.url}/v1")
    operator = start_operator(tenant, **env)
    admin = cluster.rest("admin")
    started = time.monotonic()
    names = post_runs(cluster, tenant, BUILTIN_RUNS, LLM_RUNS)
    kills = KillLog()
    while len(kills.rows) < 20:
        time.sleep(rng.uniform(0.5, 6.0))
        done = sum(phase in TERMINAL for phase in phases(admin, tenant).values())
        if done == len(names):
            break
        kills.rows.append((time.monotonic() - started, count_jobs(admin, tenant), done))
        assert operator.stop(signal.SIGKILL) != 0
        time.sleep(rng.uniform(0.0, 2.0))
        operator = start_operator(tenant, **env)

    def all_finished() -> bool:
        return all(phase in TERMINAL for phase in phases(admin, tenant).values())

    wait_for(all_finished, "every run to finish", timeout=600, interval=2)
    print(
        f"{len(names)} runs, {len(kills.rows)} kills, all finished after "
        f"{time.monotonic() - started:.0f} s"
    )
    kills.print()
    assert kills.rows, "no kill happened before the runs finished"
    check_invariants(cluster, tenant, names, s3, faulty)


def test_two_replicas_whose_leader_is_killed_duplicate_and_lose_nothing(
    cluster: Cluster,
    tenant: str,
    faulty: GatewayProcess,
    start_operator: Callable[..., OperatorProcess],
    s3: S3Endpoint,
    tmp_path: Path,
) -> None:
    rng = random.Random(fault_seed())  # noqa: S311 (kill moments, not secrets)
    env = {
        **operator_env(tmp_path, gateway_url=f"{faulty.url}/v1"),
        "SMARTSPEC_LEADER_ELECTION_NAMESPACE": tenant,
    }
    bind_leader_election(cluster.rest("admin"), tenant)
    replicas = [start_operator(tenant, **env)]
    wait_for(lambda: replicas[0].metric("smartspec_operator_leader") == 1, "a leader")
    replicas.append(start_operator(tenant, **env))
    admin = cluster.rest("admin")
    started = time.monotonic()
    names = post_runs(cluster, tenant, builtin=10, llm=4)
    kills = KillLog()
    for _ in range(3):
        time.sleep(rng.uniform(0.5, 5.0))
        leader = wait_for(
            lambda: next(
                (r for r in replicas if r.running and r.metric("smartspec_operator_leader")),
                None,
            ),
            "a leader among the replicas",
        )
        done = sum(phase in TERMINAL for phase in phases(admin, tenant).values())
        kills.rows.append((time.monotonic() - started, count_jobs(admin, tenant), done))
        assert leader.stop(signal.SIGKILL) != 0
        replicas.remove(leader)
        replicas.append(start_operator(tenant, **env))  # back, as a standby

    def all_finished() -> bool:
        return all(phase in TERMINAL for phase in phases(admin, tenant).values())

    wait_for(all_finished, "every run to finish", timeout=600, interval=2)
    print(
        f"{len(names)} runs, {len(kills.rows)} leader kills, all finished after "
        f"{time.monotonic() - started:.0f} s"
    )
    kills.print()
    leaders = [r for r in replicas if r.metric("smartspec_operator_leader") == 1]
    assert len(leaders) == 1
    check_invariants(cluster, tenant, names, s3, faulty)


def test_runs_complete_across_an_api_server_restart_and_an_etcd_compaction(
    cluster: Cluster,
    tenant: str,
    local_node: LocalNode | RealNode,
    faulty: GatewayProcess,
    start_operator: Callable[..., OperatorProcess],
    s3: S3Endpoint,
    tmp_path: Path,
) -> None:
    """kube-apiserver down for 10 s mid-run, with etcd compacted to the present first: every
    watch must relist (410 Gone) instead of resuming. Invariants as `check_invariants`."""
    control_plane = cluster.control_plane
    if control_plane is None:
        pytest.skip("needs the project's own control plane to restart")
    if isinstance(local_node, LocalNode):
        # Its pod runner gives up on a pod whose status it cannot write; a kubelet retries.
        pytest.skip("the fake node does not outlive an API server outage: needs the real node")
    start_operator(tenant, **operator_env(tmp_path, gateway_url=f"{faulty.url}/v1"))
    admin = cluster.rest("admin")
    names = post_runs(cluster, tenant, builtin=8, llm=3)
    wait_for(lambda: count_jobs(admin, tenant) >= 6, "the first generator Jobs")
    revision = control_plane.compact_etcd()
    ready_after = control_plane.restart_apiserver(down_seconds=10)
    back = time.monotonic()
    before = (count_jobs(admin, tenant), sum(p in TERMINAL for p in phases(admin, tenant).values()))

    def progressed() -> bool:
        done = sum(p in TERMINAL for p in phases(admin, tenant).values())
        return (count_jobs(admin, tenant), done) != before

    wait_for(progressed, "the operator to make progress after the restart", timeout=300)
    recovered = time.monotonic() - back

    def all_finished() -> bool:
        return all(phase in TERMINAL for phase in phases(admin, tenant).values())

    wait_for(all_finished, "every run to finish", timeout=600, interval=2)
    print(
        f"etcd compacted at revision {revision}; kube-apiserver down 10 s, ready"
        f" {ready_after:.1f} s after its start; first progress {recovered:.1f} s after that; all"
        f" {len(names)} runs finished {time.monotonic() - back:.0f} s after it"
    )
    check_invariants(cluster, tenant, names, s3, faulty)
