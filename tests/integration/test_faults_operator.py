"""Faults on purpose: the operator is killed (SIGKILL) at random moments while 50 runs go
through the real node, and nothing is duplicated, lost or overspent.

Contract: specs/CORE-004-generation-runs.md, sections "Reconciler" and "High availability".
Each test names the invariants it checks (`check_invariants`). The kill moments come from a
seeded generator; the seed is printed (`SMARTSPEC_FAULT_SEED` replays one). llm runs call the
local OpenAI-compatible stub through the gateway, answering every call with the canned
correct project: this tests the pipeline under faults, never model quality.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from stubs import model_faults
from stubs.openai_stub import StubServer
from testcluster.gateway_calls import create_budget, ledger_entries, settled, verify_ledger
from testcluster.harness import GatewayProcess, OperatorProcess, wait_for
from testcluster.plugin import Cluster
from testcluster.rest import Rest
from testcluster.runs import API, bind_leader_election, example, operator_env
from testcluster.s3 import S3Endpoint

pytestmark = [pytest.mark.integration, pytest.mark.faults]

BUILTIN_RUNS = 35
LLM_RUNS = 15
TERMINAL = {"Succeeded", "Failed"}


def fault_seed() -> int:
    seed = int(os.environ.get("SMARTSPEC_FAULT_SEED") or time.time_ns() % 1_000_000)
    print(f"fault seed: {seed} (SMARTSPEC_FAULT_SEED={seed} replays these kill moments)")
    return seed


@dataclass
class KillLog:
    """When each kill happened, and how far the runs were at that moment."""

    rows: list[tuple[float, int, int]] = field(default_factory=list)
    """(seconds since the first run was posted, Jobs that existed, runs finished)."""

    def print(self) -> None:
        for at, jobs, done in self.rows:
            print(f"  kill at {at:6.1f} s: {jobs:3d} Jobs existed, {done:2d} runs finished")


def post_runs(cluster: Cluster, namespace: str, builtin: int, llm: int) -> list[str]:
    builder = cluster.rest("builder")
    names = []
    for index in range(builtin + llm):
        is_llm = index >= builtin
        run = example("generationrun-llm.yaml" if is_llm else "generationrun-builtin.yaml")
        run["metadata"]["name"] = f"{'llm' if is_llm else 'builtin'}-{index:02d}"
        if is_llm:
            run["spec"]["generator"].update(model="stub-model", maxTokens=60_000, repairTurns=0)
            run["spec"]["sandbox"] = {}
            del run["spec"]["maxCredits"]
        builder.post(f"{API}/{namespace}/generationruns", run)
        names.append(run["metadata"]["name"])
    return names


def phases(admin: Rest, namespace: str) -> dict[str, str]:
    items = admin.get(f"{API}/{namespace}/generationruns")["items"]
    return {r["metadata"]["name"]: (r.get("status") or {}).get("phase", "") for r in items}


def count_jobs(admin: Rest, namespace: str) -> int:
    return len(admin.get(f"/apis/batch/v1/namespaces/{namespace}/jobs")["items"])


def check_invariants(
    cluster: Cluster,
    namespace: str,
    names: list[str],
    s3: S3Endpoint,
    gateway: GatewayProcess,
) -> None:
    """After the faults:
    1. every run reached its correct terminal phase (Succeeded: every answer is correct);
    2. one attempt per number, numbered from 1;
    3. exactly one Job and one instructions Secret per step of each attempt, and the two
       sandbox NetworkPolicies per run, each owned by its run: none orphaned or extra;
    4. each run's credits in its status equal its ledger's settled entries;
    5. the ledger verifies, and no budget credit stays reserved."""
    admin = cluster.rest("admin")
    runs = {
        r["metadata"]["name"]: r for r in admin.get(f"{API}/{namespace}/generationruns")["items"]
    }
    assert sorted(runs) == sorted(names)
    wanted_steps: set[str] = set()
    for name, run in runs.items():
        status = run["status"]
        assert status["phase"] == "Succeeded", (name, status.get("conditions"))
        numbers = [a["number"] for a in status["attempts"]]
        assert numbers == list(range(1, len(numbers) + 1)), (name, numbers)
        for number in numbers:
            wanted_steps |= {f"{name}-gen-{number}", f"{name}-test-{number}"}
    uids = {run["metadata"]["uid"] for run in runs.values()}

    def owned_names(path: str) -> list[str]:
        found = []
        for item in admin.get(path)["items"]:
            owners = [o["uid"] for o in item["metadata"].get("ownerReferences") or []]
            assert set(owners) & uids, f"orphan: {item['metadata']['name']} owned by {owners}"
            found.append(item["metadata"]["name"])
        return sorted(found)

    assert owned_names(f"/apis/batch/v1/namespaces/{namespace}/jobs") == sorted(wanted_steps)
    assert owned_names(f"/api/v1/namespaces/{namespace}/secrets") == sorted(wanted_steps)
    policies = owned_names(f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies")
    assert policies == sorted(f"{n}-sandbox-{role}" for n in names for role in ("gen", "test"))

    budget = settled(admin, namespace)
    entries = ledger_entries(s3, admin, namespace)
    charged: dict[str, int] = {}
    for entry in entries:
        if entry.kind == "settle" and entry.run_uid:
            charged[entry.run_uid] = charged.get(entry.run_uid, 0) + entry.credits
    for name, run in runs.items():
        usage = run["status"].get("usage") or {}
        expected = charged.get(run["metadata"]["uid"], 0)
        assert usage.get("credits", 0) == expected, (name, usage, expected)
        if name.startswith("llm-"):
            assert expected > 0, f"{name} made model calls and was charged nothing"
    assert budget.get("spentCredits", 0) == sum(charged.values())
    verify_ledger(cluster, namespace, gateway)


@pytest.fixture
def faulty(
    cluster: Cluster,
    tenant: str,
    local_node: Any,
    start_gateway: Callable[..., GatewayProcess],
    stub: StubServer,
) -> GatewayProcess:
    stub.reply_fn = model_faults.answer_with()  # every call: the canned correct project
    gateway = start_gateway()
    create_budget(cluster, tenant, 500_000_000)
    spec = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "examples/todo-service/spec.yaml").read_text()
    )
    cluster.rest("builder").post(f"{API}/{tenant}/specs", spec)
    return gateway


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
