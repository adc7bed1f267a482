"""GenerationRuns end to end: the real operator, API server, Job controller, local node
(sandbox programs run as local processes, no isolation), S3 and gateway.

Contract: specs/CORE-004-generation-runs.md. Model answers come from a local
OpenAI-compatible stub server: canned, so this tests the pipeline, never model quality.
"""

from __future__ import annotations

import hashlib
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from smartspec.api.v1alpha1.spec import SpecSpec
from smartspec.sandbox import builtin
from testcluster.harness import wait_for
from testcluster.localnode import LocalNode
from testcluster.plugin import Cluster
from testcluster.runs import API, example, finished, operator_env, run_status

pytestmark = pytest.mark.integration


def condition(status: dict[str, Any], kind: str) -> str:
    for item in status.get("conditions", []):
        if item["type"] == kind:
            return f"{item['status']}/{item['reason']}"
    return "absent"


def test_builtin_run_succeeds_with_artifacts_and_evidence(
    cluster: Cluster,
    tenant: str,
    local_node: LocalNode,
    start_operator: Callable[..., Any],
    s3_client: Any,
    s3: Any,
    tmp_path: Path,
) -> None:
    start_operator(tenant, **operator_env(tmp_path))
    builder = cluster.rest("builder")
    builder.post(f"{API}/{tenant}/specs", example("spec.yaml"))
    builder.post(f"{API}/{tenant}/generationruns", example("generationrun-builtin.yaml"))
    status = finished(cluster.rest("admin"), tenant, "todo-api-builtin")
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    assert condition(status, "Succeeded") == "True/TestsPassed"
    assert condition(status, "Admitted") == "True/Admitted"
    evidence = status["evidence"]
    assert evidence["testsPassed"] > 0
    assert evidence["testsFailed"] == 0
    assert evidence["requirementsCovered"] >= 3
    assert evidence["summary"] == f"{evidence['testsPassed']}/{evidence['testsPassed']}"
    assert status["pinnedSpec"]["revision"] == 1

    # Every stored file matches the manifest, and the manifest the recorded digest.
    prefix = status["artifacts"]["uri"].split("/", 3)[3].removesuffix("files/")
    manifest_raw = s3_client.get_object(Bucket=s3.bucket, Key=prefix + "manifest.json")[
        "Body"
    ].read()
    assert (
        "sha256:" + hashlib.sha256(manifest_raw).hexdigest()
        == status["artifacts"]["manifestSha256"]
    )
    manifest = json.loads(manifest_raw)
    assert len(manifest["files"]) == status["artifacts"]["fileCount"]
    for entry in manifest["files"]:
        body = s3_client.get_object(Bucket=s3.bucket, Key=prefix + "files/" + entry["path"])[
            "Body"
        ].read()
        assert "sha256:" + hashlib.sha256(body).hexdigest() == entry["sha256"]
    report = json.loads(
        s3_client.get_object(Bucket=s3.bucket, Key=prefix + "report/summary.json")["Body"].read()
    )
    assert report["result"] == "passed"

    run = cluster.rest("admin").get(f"{API}/{tenant}/generationruns/todo-api-builtin")
    assert run["metadata"]["labels"]["smartspec.dev/spec"] == "todo-api"
    jobs = cluster.rest("admin").get(f"/apis/batch/v1/namespaces/{tenant}/jobs")["items"]
    assert sorted(job["metadata"]["name"] for job in jobs) == [
        "todo-api-builtin-gen-1",
        "todo-api-builtin-test-1",
    ]


@pytest.mark.parametrize(
    ("change", "budget_allow", "expected", "phase"),
    [
        ({"allowDraft": False}, None, "False/SpecNotApproved", "Pending"),
        ({"specRef": {"name": "no-such-spec"}}, None, "False/SpecNotFound", "Pending"),
        (
            {"generator": {"backend": "llm", "model": "gpt-4o"}},
            ["stub-*"],
            "False/ModelNotAllowed",
            "Failed",
        ),
    ],
    ids=["unapproved-spec", "unknown-spec", "disallowed-model"],
)
def test_malformed_runs_get_a_condition_and_no_job(
    cluster: Cluster,
    tenant: str,
    start_operator: Callable[..., Any],
    tmp_path: Path,
    change: dict[str, Any],
    budget_allow: list[str] | None,
    expected: str,
    phase: str,
) -> None:
    start_operator(tenant, **operator_env(tmp_path))
    if budget_allow is not None:
        cluster.rest("platform_admin").post(
            f"{API}/{tenant}/creditbudgets",
            {
                "apiVersion": "smartspec.dev/v1alpha1",
                "kind": "CreditBudget",
                "metadata": {"name": "default"},
                "spec": {"limitCredits": 1000, "models": {"allow": budget_allow}},
            },
        )
    builder = cluster.rest("builder")
    builder.post(f"{API}/{tenant}/specs", example("spec.yaml"))
    run = example("generationrun-builtin.yaml")
    run["spec"].update(change)
    builder.post(f"{API}/{tenant}/generationruns", run)
    admin = cluster.rest("admin")

    def verdict() -> dict[str, Any] | None:
        status = run_status(admin, tenant, "todo-api-builtin")
        return status if condition(status, "Admitted") == expected else None

    status = wait_for(verdict, f"the admission verdict {expected}")
    assert status["phase"] == phase
    assert admin.get(f"/apis/batch/v1/namespaces/{tenant}/jobs")["items"] == []
    events = admin.get(f"/api/v1/namespaces/{tenant}/events")["items"]
    reason = expected.split("/")[1]
    assert any(event["reason"] == reason for event in events), "a Warning Event says why"


def stub_model_reply(body: dict[str, Any]) -> str:
    """A canned model: the builtin generator's project, broken unless feedback is present.

    This stands in for a model that fixes its code when shown failing tests; it measures the
    feedback plumbing, never model quality.
    """
    user = body["messages"][-1]["content"]
    spec_json = user.split("canonical JSON:\n", 1)[1].split("\n\nRequirement ids:", 1)[0]
    spec = SpecSpec.model_validate({**json.loads(spec_json), "lifecycle": "Draft"})
    generation = builtin.generate(spec)
    fixed = "failed (TestsFailed)" in user
    files = []
    for item in generation.files:
        content = item.content.decode()
        if item.path == "app.py" and not fixed:
            content = content.replace("201", "200")  # a wrong status code: tests must fail
        files.append(
            {"path": item.path, "content": content, "requirements": list(item.requirements)}
        )
    return json.dumps({"files": files})


def test_llm_run_fails_then_fixes_itself_from_test_feedback(
    cluster: Cluster,
    tenant: str,
    local_node: LocalNode,
    start_operator: Callable[..., Any],
    start_gateway: Callable[..., Any],
    stub: Any,
    tmp_path: Path,
) -> None:
    stub.reply_fn = stub_model_reply
    gateway = start_gateway()
    start_operator(tenant, **operator_env(tmp_path, gateway_url=f"{gateway.url}/v1"))
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
    builder.post(f"{API}/{tenant}/specs", example("spec.yaml"))
    run = example("generationrun-llm.yaml")
    run["spec"]["generator"]["model"] = "stub-model"
    run["spec"]["generator"]["maxTokens"] = 60_000
    run["spec"]["sandbox"] = {}
    del run["spec"]["maxCredits"]
    builder.post(f"{API}/{tenant}/generationruns", run)
    admin = cluster.rest("admin")
    status = finished(admin, tenant, "todo-api-llm")
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    first, second = status["attempts"]
    assert (first["result"], second["result"]) == ("Failed", "Passed")
    assert first["feedbackDigest"].startswith("sha256:")
    prompts = [request["messages"][-1]["content"] for request in stub.requests]
    assert len(prompts) == 2
    assert "Attempt 1 failed (TestsFailed)." in prompts[1]
    assert "=== app.py" in prompts[1], "the files to repair are in the prompt"
    assert "Attempt 1 failed" not in prompts[0]

    def settled_budget() -> dict[str, Any] | None:
        budget = admin.get(f"{API}/{tenant}/creditbudgets/default").get("status") or {}
        return budget if budget.get("reservedCredits", 1) == 0 else None

    def usage_of_both_calls() -> dict[str, Any] | None:
        usage: dict[str, Any] = run_status(admin, tenant, "todo-api-llm").get("usage") or {}
        return usage if usage.get("calls") == 2 else None

    budget = wait_for(settled_budget, "the gateway to settle and return its lease")
    usage = wait_for(usage_of_both_calls, "the run's usage")
    assert usage["credits"] == budget["spentCredits"] > 0, "credits charged equal the ledger"


def test_budget_exhausted_mid_run_fails_without_another_job(
    cluster: Cluster,
    tenant: str,
    local_node: LocalNode,
    start_operator: Callable[..., Any],
    start_gateway: Callable[..., Any],
    stub: Any,
    tmp_path: Path,
) -> None:
    stub.reply_fn = stub_model_reply  # attempt 1 fails its tests, so attempt 2 must call again
    gateway = start_gateway()
    start_operator(tenant, **operator_env(tmp_path, gateway_url=f"{gateway.url}/v1"))
    platform_admin = cluster.rest("platform_admin")
    budget_path = f"{API}/{tenant}/creditbudgets/default"
    platform_admin.post(
        f"{API}/{tenant}/creditbudgets",
        {
            "apiVersion": "smartspec.dev/v1alpha1",
            "kind": "CreditBudget",
            "metadata": {"name": "default"},
            "spec": {"limitCredits": 5_000_000, "models": {"allow": ["stub-*"]}},
        },
    )
    builder = cluster.rest("builder")
    builder.post(f"{API}/{tenant}/specs", example("spec.yaml"))
    run = example("generationrun-llm.yaml")
    run["spec"]["generator"].update(model="stub-model", maxTokens=60_000)
    run["spec"]["sandbox"] = {}
    del run["spec"]["maxCredits"]
    builder.post(f"{API}/{tenant}/generationruns", run)
    admin = cluster.rest("admin")

    def first_call_settled() -> int | None:
        spent = int((admin.get(budget_path).get("status") or {}).get("spentCredits", 0))
        return spent or None

    spent = wait_for(first_call_settled, "attempt 1's model call to be settled", timeout=120)
    # The platform admin cuts the budget to what is spent: the next call must be refused.
    platform_admin.patch(budget_path, {"spec": {"limitCredits": spent}})
    status = finished(admin, tenant, "todo-api-llm")
    assert status["phase"] == "Failed", json.dumps(status, indent=1)[:3000]
    assert condition(status, "Succeeded") == "False/BudgetExhausted"
    jobs = sorted(
        job["metadata"]["name"]
        for job in admin.get(f"/apis/batch/v1/namespaces/{tenant}/jobs")["items"]
    )
    assert jobs == ["todo-api-llm-gen-1", "todo-api-llm-gen-2", "todo-api-llm-test-1"]
    assert len(stub.requests) == 1, "the refused call never reached the provider"


def test_a_run_whose_own_cap_binds_fails_run_cap_reached_not_budget_exhausted(
    cluster: Cluster,
    tenant: str,
    local_node: LocalNode,
    start_operator: Callable[..., Any],
    start_gateway: Callable[..., Any],
    stub: Any,
    tmp_path: Path,
) -> None:
    gateway = start_gateway()
    start_operator(tenant, **operator_env(tmp_path, gateway_url=f"{gateway.url}/v1"))
    cluster.rest("platform_admin").post(
        f"{API}/{tenant}/creditbudgets",
        {
            "apiVersion": "smartspec.dev/v1alpha1",
            "kind": "CreditBudget",
            "metadata": {"name": "default"},
            "spec": {"limitCredits": 5_000_000},
        },
    )
    builder = cluster.rest("builder")
    builder.post(f"{API}/{tenant}/specs", example("spec.yaml"))
    run = example("generationrun-llm.yaml")
    run["spec"]["generator"]["model"] = "stub-model"
    run["spec"]["sandbox"] = {}
    run["spec"]["maxCredits"] = 5  # less than the prompt alone costs: no call can fit
    builder.post(f"{API}/{tenant}/generationruns", run)
    admin = cluster.rest("admin")

    status = finished(admin, tenant, "todo-api-llm")
    assert status["phase"] == "Failed", json.dumps(status, indent=1)[:3000]
    assert condition(status, "Succeeded") == "False/RunCapReached"
    message = next(c["message"] for c in status["conditions"] if c["type"] == "Succeeded")
    assert "run_cap_reached" in message
    assert "may spend 5 credits (spec.maxCredits of the run)" in message
    assert "so 5 are left" in message
    assert stub.requests == [], "the refused call never reached the provider"
    jobs = admin.get(f"/apis/batch/v1/namespaces/{tenant}/jobs")["items"]
    assert [job["metadata"]["name"] for job in jobs] == ["todo-api-llm-gen-1"]
    budget = admin.get(f"{API}/{tenant}/creditbudgets/default").get("status") or {}
    assert budget.get("spentCredits", 0) == 0


def test_operator_restarts_never_duplicate_a_job(
    cluster: Cluster,
    tenant: str,
    local_node: LocalNode,
    start_operator: Callable[..., Any],
    tmp_path: Path,
) -> None:
    operator = start_operator(tenant, **operator_env(tmp_path))
    builder = cluster.rest("builder")
    builder.post(f"{API}/{tenant}/specs", example("spec.yaml"))
    builder.post(f"{API}/{tenant}/generationruns", example("generationrun-builtin.yaml"))
    admin = cluster.rest("admin")
    jobs_path = f"/apis/batch/v1/namespaces/{tenant}/jobs"

    def job_names() -> list[str]:
        return sorted(job["metadata"]["name"] for job in admin.get(jobs_path)["items"])

    wait_for(lambda: "todo-api-builtin-gen-1" in job_names(), "the generator Job")
    assert operator.stop(signal.SIGKILL) != 0  # killed during generation
    operator = start_operator(tenant, **operator_env(tmp_path))
    wait_for(lambda: "todo-api-builtin-test-1" in job_names(), "the test Job")
    assert operator.stop(signal.SIGKILL) != 0  # killed during testing
    start_operator(tenant, **operator_env(tmp_path))
    status = finished(admin, tenant, "todo-api-builtin")
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    assert job_names() == ["todo-api-builtin-gen-1", "todo-api-builtin-test-1"]
    secrets = admin.get(f"/api/v1/namespaces/{tenant}/secrets")["items"]
    owned = [s["metadata"]["name"] for s in secrets if s["metadata"]["name"].startswith("todo-api")]
    assert sorted(owned) == ["todo-api-builtin-gen-1", "todo-api-builtin-test-1"]
