"""Resource limits and deadlines of the tester sandbox, enforced by the real node.

A stub model (canned: it measures the plumbing, never model quality) answers an llm run with
the builtin generator's project plus one extra generated test: one that allocates past the
tester's memory limit, or one that never returns. The kernel's OOM killer (the container's
memory cgroup) and the tester's time limit stop them; the run's attempt must say which. On the
fake node nothing enforces a limit, so these tests need the real one. CORE-004 "Sandbox
Jobs"; specs/TEST-001-control-plane.md, "Real node".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.api.v1alpha1.spec import SpecSpec
from smartspec.sandbox import builtin
from testcluster.harness import TEST_TOKEN_KEY, wait_for
from testcluster.plugin import Cluster
from testcluster.realnode import RealNode

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
API = "/apis/smartspec.dev/v1alpha1/namespaces"
SPEC = REPO / "examples" / "todo-service" / "spec.yaml"

ALLOCATE = """

def test_allocates_past_the_memory_limit():
    blocks = [b"x" * (64 * 2**20) for _ in range(32)]  # 2 GiB, every page written
    assert len(blocks) == 32
"""
HANG = """

def test_never_returns():
    import time
    while True:
        time.sleep(1)
"""


@pytest.fixture
def node(cluster: Cluster) -> RealNode:
    if cluster.real_node is None:
        pytest.skip("needs the real node: the fake node enforces no memory limit")
    return cluster.real_node


def model_adding(extra_test: str) -> Callable[[dict[str, Any]], str]:
    """A canned model: the builtin project with `extra_test` appended to its test module."""

    def reply(body: dict[str, Any]) -> str:
        user = body["messages"][-1]["content"]
        spec_json = user.split("canonical JSON:\n", 1)[1].split("\n\nRequirement ids:", 1)[0]
        spec = SpecSpec.model_validate({**json.loads(spec_json), "lifecycle": "Draft"})
        files = []
        for item in builtin.generate(spec).files:
            content = item.content.decode()
            if item.path == "test_app.py":
                content += extra_test
            files.append(
                {"path": item.path, "content": content, "requirements": list(item.requirements)}
            )
        return json.dumps({"files": files})

    return reply


def _start_run(
    cluster: Cluster,
    tenant: str,
    start_operator: Callable[..., Any],
    start_gateway: Callable[..., Any],
    tmp_path: Path,
    sandbox: dict[str, Any] | None = None,
) -> dict[str, Any]:
    gateway = start_gateway()
    keys = tmp_path / "operator-token-keys"
    keys.write_bytes(TEST_TOKEN_KEY + b"\n")
    start_operator(
        tenant,
        SMARTSPEC_TOKEN_KEYS_FILE=str(keys),
        SMARTSPEC_GATEWAY_URL=f"{gateway.url}/v1",
        SMARTSPEC_GATEWAY_NAMESPACE="smartspec",
    )
    cluster.rest("platform_admin").post(
        f"{API}/{tenant}/creditbudgets",
        {
            "apiVersion": "smartspec.dev/v1alpha1",
            "kind": "CreditBudget",
            "metadata": {"name": "default"},
            "spec": {"limitCredits": 5_000_000, "models": {"allow": ["stub-*"]}},
        },
    )
    builder = cluster.rest("builder")
    builder.post(f"{API}/{tenant}/specs", yaml.safe_load(SPEC.read_text()))
    run: dict[str, Any] = {
        "apiVersion": "smartspec.dev/v1alpha1",
        "kind": "GenerationRun",
        "metadata": {"name": "limits"},
        "spec": {
            "specRef": {"name": "todo-api"},
            "generator": {"backend": "llm", "model": "stub-model", "maxTokens": 60_000},
            "allowDraft": True,
            "maxAttempts": 1,
            "timeouts": {"attemptSeconds": 120, "totalSeconds": 600},
        },
    }
    if sandbox:
        run["spec"]["sandbox"] = sandbox
    builder.post(f"{API}/{tenant}/generationruns", run)

    def finished() -> dict[str, Any] | None:
        status: dict[str, Any] = (
            cluster.rest("admin").get(f"{API}/{tenant}/generationruns/limits").get("status") or {}
        )
        return status if status.get("phase") in {"Succeeded", "Failed"} else None

    return wait_for(finished, "the run to finish", timeout=300)


def _tester_pod(cluster: Cluster, tenant: str, status: dict[str, Any]) -> dict[str, Any]:
    pods: list[dict[str, Any]] = cluster.rest("admin").get(
        f"/api/v1/namespaces/{tenant}/pods", labelSelector="smartspec.dev/role=tester"
    )["items"]
    assert len(pods) == 1, json.dumps(status, indent=1)[:3000]
    return pods[0]


def test_a_test_past_the_memory_limit_is_oom_killed_and_reported(
    cluster: Cluster,
    node: RealNode,
    tenant: str,
    start_operator: Callable[..., Any],
    start_gateway: Callable[..., Any],
    stub: Any,
    tmp_path: Path,
) -> None:
    stub.reply_fn = model_adding(ALLOCATE)
    limits = {"requests": {"memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    status = _start_run(
        cluster, tenant, start_operator, start_gateway, tmp_path, {"testerResources": limits}
    )
    terminated = _tester_pod(cluster, tenant, status)["status"]["containerStatuses"][0]["state"]
    assert terminated["terminated"]["reason"] == "OOMKilled", terminated
    assert status["phase"] == "Failed"
    attempt = status["attempts"][-1]
    assert attempt.get("reason") == "OOMKilled", attempt
    assert "ran out of memory" in attempt["message"]


def test_a_hanging_test_is_stopped_at_the_time_limit_and_reported(
    cluster: Cluster,
    node: RealNode,
    tenant: str,
    start_operator: Callable[..., Any],
    start_gateway: Callable[..., Any],
    stub: Any,
    tmp_path: Path,
) -> None:
    stub.reply_fn = model_adding(HANG)
    status = _start_run(cluster, tenant, start_operator, start_gateway, tmp_path)
    assert status["phase"] == "Failed"
    attempt = status["attempts"][-1]
    assert attempt["result"] == "Failed", attempt
    tested = next(c for c in status["conditions"] if c["type"] == "Tested")
    assert "pytest did not finish within 60 s and was killed" in tested["message"], tested
    tester = _tester_pod(cluster, tenant, status)
    assert tester["status"]["phase"] in {"Failed", "Succeeded"}  # stopped, not still running
