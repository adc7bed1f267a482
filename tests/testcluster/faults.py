"""What the fault suite's tests share: posting a batch of runs, watching them finish, and the
invariants every fault must leave intact (`check_invariants`).

Contract: specs/CORE-004-generation-runs.md, section "Faults".
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from testcluster.gateway_calls import ledger_entries, settled, verify_ledger
from testcluster.harness import GatewayProcess
from testcluster.plugin import Cluster
from testcluster.rest import Rest
from testcluster.runs import API, example
from testcluster.s3 import S3Endpoint

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
    3. exactly one Job and one instructions Secret per step each attempt took (its
       generator, and its tester when it got that far), and the two sandbox NetworkPolicies
       per run, each owned by its run: none orphaned, missing or extra;
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
        attempts = status["attempts"]
        numbers = [a["number"] for a in attempts]
        assert numbers == list(range(1, len(numbers) + 1)), (name, numbers)
        for attempt in attempts:
            assert attempt.get("generatorJob") == f"{name}-gen-{attempt['number']}", attempt
            tested = attempt.get("testJob")
            assert tested in {None, f"{name}-test-{attempt['number']}"}, attempt
            wanted_steps |= {attempt["generatorJob"], *([tested] if tested else [])}
    uids = {run["metadata"]["uid"] for run in runs.values()}

    def owned_names(path: str) -> list[str]:
        found = []
        for item in admin.get(path)["items"]:
            owners = [o["uid"] for o in item["metadata"].get("ownerReferences") or []]
            assert set(owners) & uids, f"orphan: {item['metadata']['name']} owned by {owners}"
            found.append(item["metadata"]["name"])
        return sorted(found)

    # This module is no test file: pytest does not rewrite its asserts, so each says itself.
    jobs = owned_names(f"/apis/batch/v1/namespaces/{namespace}/jobs")
    assert jobs == sorted(wanted_steps), _difference("Jobs", jobs, wanted_steps)
    secrets = owned_names(f"/api/v1/namespaces/{namespace}/secrets")
    assert secrets == sorted(wanted_steps), _difference("Secrets", secrets, wanted_steps)
    policies = owned_names(f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies")
    wanted_policies = {f"{n}-sandbox-{role}" for n in names for role in ("gen", "test")}
    assert policies == sorted(wanted_policies), _difference("policies", policies, wanted_policies)

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
    spent = budget.get("spentCredits", 0)
    assert spent == sum(charged.values()), f"spent {spent}, ledger {sum(charged.values())}"
    verify_ledger(cluster, namespace, gateway)


def _difference(what: str, found: list[str], wanted: set[str]) -> str:
    return f"{what}: extra {sorted(set(found) - wanted)}, missing {sorted(wanted - set(found))}"
