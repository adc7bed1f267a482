"""The agent backend's pure parts: the run's fields, the pod, the run machine's verdicts.

specs/CORE-004-generation-runs.md, "Agent backend". The programs themselves (prepare, the
launcher, finish) run for real in test_sandbox_agent.py; a real agent CLI on the real node in
tests/integration/test_agent_backend.py.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from smartspec.api.gateway import Constraint, RefusalCode
from smartspec.api.sandbox import AGENT_STATUS_DIR
from smartspec.api.v1alpha1 import GenerationRun
from smartspec.api.v1alpha1.generationrun import FailureKind
from smartspec.builders.agent_job import (
    AGENT_CONTAINER,
    FINISH_RESERVE_SECONDS,
    LAUNCHER_SCRIPT,
    PREPARE_CONTAINER,
    RUN_TOKEN_KEY,
)
from smartspec.builders.jobs import (
    INSTRUCTIONS_DIR,
    SandboxBuildError,
    agent_image_allowed,
    build_generator_job,
    build_instructions_secret,
    build_network_policy,
    instructions_secret_name,
)
from smartspec.gateway.runs import RunCache
from smartspec.kube.client import KubeError
from smartspec.logic.conditions import find_condition
from smartspec.logic.refusals import Refusal
from smartspec.logic.run_machine import JobObservation, JobState
from smartspec.logic.run_tokens import RunTokenClaims
from smartspec.reconcilers.run_observe import observe_jobs
from unit.test_crds import CRDS, cel_violations
from unit.test_jobs import BASE_SETTINGS, load_run, restricted_violations, run_document
from unit.test_run_machine import GEN_OK, report, seen, step

GATEWAY = "http://smartspec-gateway.smartspec.svc:8000/v1"
AGENT: dict[str, Any] = {
    "image": "registry.example/agents/aider:0.86.1",
    "command": ["aider"],
    "args": ["--model", "openai/$(SMARTSPEC_MODEL)", "--message-file", "$(SMARTSPEC_TASK_FILE)"],
    "env": [{"name": "AIDER_ANALYTICS", "value": "false"}],
    "timeoutSeconds": 600,
}


def agent_run(**agent: Any) -> GenerationRun:
    def edit(document: dict[str, Any]) -> None:
        document["spec"]["generator"] = {
            "backend": "agent",
            "model": "stub-model",
            "agent": {**AGENT, **agent},
        }

    return load_run("generationrun-llm.yaml", edit)


def agent_job(run: GenerationRun, deadline: int = 1800) -> dict[str, Any]:
    return build_generator_job(
        run,
        1,
        BASE_SETTINGS,
        instructions_secret=instructions_secret_name(run.metadata.name, 1, "gen"),
        deadline_seconds=deadline,
        gateway_base_url=GATEWAY,
    )


# ---------------------------------------------------------------- the run's fields


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("OPENAI_API_KEY", "set by the operator"),
        ("ANTHROPIC_BASE_URL", "set by the operator"),
        ("SMARTSPEC_MODEL", "set by the operator"),
        ("HOME", "set by the operator"),
        ("GITHUB_TOKEN", "says it holds a secret (TOKEN)"),
        ("db_password", "says it holds a secret (PASSWORD)"),
        ("AWS_SECRET_ACCESS_KEY", "says it holds a secret"),
    ],
)
def test_agent_env_refuses_our_names_and_secret_looking_ones(name: str, problem: str) -> None:
    with pytest.raises(ValidationError) as caught:
        agent_run(env=[{"name": name, "value": "x"}])
    assert f"generator.agent.env[0] ({name})" in str(caught.value)
    assert problem in str(caught.value)


def test_agent_env_names_once_and_backend_and_agent_go_together() -> None:
    twice = [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]
    with pytest.raises(ValidationError, match="names A more than once"):
        agent_run(env=twice)
    document = agent_run().to_wire()
    document["spec"]["generator"]["backend"] = "llm"
    with pytest.raises(ValidationError, match=r"generator\.agent is required when"):
        GenerationRun.model_validate(document)
    del document["spec"]["generator"]["agent"]
    document["spec"]["generator"]["backend"] = "agent"
    with pytest.raises(ValidationError, match=r"generator\.agent is required when"):
        GenerationRun.model_validate(document)
    document = agent_run().to_wire()
    del document["spec"]["generator"]["model"]
    required = r"model is required when generator\.backend is agent"
    with pytest.raises(ValidationError, match=required):
        GenerationRun.model_validate(document)


# ---------------------------------------------------------------- the pod


def test_the_agent_runs_between_prepare_and_finish_without_the_instructions() -> None:
    job = agent_job(agent_run())
    pod = job["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == [PREPARE_CONTAINER, AGENT_CONTAINER]
    assert [c["name"] for c in pod["containers"]] == ["generator"]
    prepare, agent = pod["initContainers"]
    finish = pod["containers"][0]
    assert prepare["command"][-1] == "prepare"
    assert finish["command"][-1] == "finish"
    assert prepare["image"] == finish["image"] == BASE_SETTINGS.generator_image
    assert agent["image"] == AGENT["image"]
    # The launcher wraps the run's command; $(NAME) is left for the kubelet to expand.
    assert agent["command"] == ["/bin/sh", "-c", LAUNCHER_SCRIPT, "smartspec-agent-launcher"]
    assert agent["args"] == [*AGENT["command"], *AGENT["args"]]
    assert "$(" not in LAUNCHER_SCRIPT, "the kubelet would expand it"
    mounts = {m["mountPath"] for m in agent["volumeMounts"]}
    assert INSTRUCTIONS_DIR not in mounts, "the agent must not read the upload URLs"
    assert AGENT_STATUS_DIR in mounts
    status_mount = next(m for m in finish["volumeMounts"] if m["mountPath"] == AGENT_STATUS_DIR)
    assert status_mount["readOnly"] is True
    env = {item["name"]: item for item in agent["env"]}
    secret = instructions_secret_name("todo-api-llm", 1, "gen")
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        assert env[name]["valueFrom"] == {"secretKeyRef": {"name": secret, "key": RUN_TOKEN_KEY}}
    assert env["OPENAI_BASE_URL"]["value"] == GATEWAY
    assert env["ANTHROPIC_BASE_URL"]["value"] == GATEWAY.removesuffix("/v1")
    assert env["SMARTSPEC_MODEL"]["value"] == "stub-model"
    assert env["SMARTSPEC_TASK_FILE"]["value"] == "/workspace/.smartspec/task.md"
    assert env["SMARTSPEC_AGENT_TIMEOUT_SECONDS"]["value"] == "600"
    assert env["AIDER_ANALYTICS"]["value"] == "false"
    assert restricted_violations(pod) == []


def test_the_agent_stops_early_enough_for_finish_to_upload() -> None:
    job = agent_job(agent_run(timeoutSeconds=3600), deadline=900)
    agent = job["spec"]["template"]["spec"]["initContainers"][1]
    env = {item["name"]: item.get("value") for item in agent["env"]}
    assert env["SMARTSPEC_AGENT_TIMEOUT_SECONDS"] == str(900 - FINISH_RESERVE_SECONDS)
    short = agent_job(agent_run(timeoutSeconds=3600), deadline=60)
    agent = short["spec"]["template"]["spec"]["initContainers"][1]
    env = {item["name"]: item.get("value") for item in agent["env"]}
    assert env["SMARTSPEC_AGENT_TIMEOUT_SECONDS"] == "45", "a quarter of a short deadline"


def test_an_agent_job_needs_the_gateway_url_and_its_secret_the_token() -> None:
    run = agent_run()
    with pytest.raises(SandboxBuildError, match="gateway's base URL"):
        build_generator_job(
            run,
            1,
            BASE_SETTINGS,
            instructions_secret="todo-api-llm-gen-1",  # noqa: S106 (a Secret's name)
            deadline_seconds=900,
        )
    document = {"role": "generator", "gateway": {"baseUrl": GATEWAY, "token": "sst1.abc"}}
    secret = build_instructions_secret(run, 1, "gen", json.dumps(document).encode())
    assert base64.b64decode(secret["data"][RUN_TOKEN_KEY]) == b"sst1.abc"
    with pytest.raises(SandboxBuildError, match="no run token"):
        build_instructions_secret(run, 1, "gen", json.dumps({"role": "generator"}).encode())
    llm = load_run("generationrun-llm.yaml")
    plain = build_instructions_secret(llm, 1, "gen", json.dumps(document).encode())
    assert RUN_TOKEN_KEY not in plain["data"], "only the agent's env reads the token alone"


def test_an_agent_generator_may_reach_the_gateway() -> None:
    policy = build_network_policy(agent_run(), BASE_SETTINGS, "gen")
    peers = [peer for rule in policy["spec"]["egress"] for peer in rule["to"]]
    assert any(
        peer.get("podSelector") == {"matchLabels": dict(BASE_SETTINGS.gateway_pod_labels)}
        for peer in peers
    )
    tester = build_network_policy(agent_run(), BASE_SETTINGS, "test")
    tester_peers = [peer for rule in tester["spec"]["egress"] for peer in rule["to"]]
    assert not any(
        "podSelector" in peer
        and "namespaceSelector" in peer
        and peer["podSelector"]["matchLabels"] == BASE_SETTINGS.gateway_pod_labels
        for peer in tester_peers
    )


# ---------------------------------------------------------------- the run machine


def refused_on(run: GenerationRun, attempt: int, code: RefusalCode) -> GenerationRun:
    document = run.to_wire()
    document["status"]["refusal"] = {
        "attempt": attempt,
        "code": code.value,
        "message": "budget exhausted: 12 credits left, the call needs 40",
        "time": datetime(2026, 12, 2, tzinfo=UTC).isoformat(),
    }
    return GenerationRun.model_validate(document)


def test_an_agent_that_failed_after_a_refusal_ends_the_run_with_the_refusal() -> None:
    run, _ = step(agent_run(), seen())
    run = refused_on(run, 1, RefusalCode.BUDGET_EXHAUSTED)
    failed = JobObservation(
        JobState.FAILED,
        exit_code=3,
        message="agent generation failed: the agent exited 1",
        failure_kind=FailureKind.AGENT_FAILED,
    )
    run, decision = step(run, seen(jobs={"todo-api-llm-gen-1": failed}))
    assert run.status is not None
    assert run.status.phase == "Failed"
    condition = find_condition(decision.status.conditions, "Succeeded")
    assert condition is not None
    assert condition.reason == "BudgetExhausted"
    assert "the gateway refused one of its calls (budget_exhausted)" in condition.message
    assert run.status.attempts[0].failure_kind == FailureKind.GATEWAY_REFUSED
    assert decision.actions == [], "no attempt follows a budget refusal"


def test_a_refusal_of_an_earlier_attempt_does_not_decide_this_one() -> None:
    run, _ = step(agent_run(), seen())
    run = refused_on(run, 7, RefusalCode.RUN_CAP_REACHED)
    failed = JobObservation(JobState.FAILED, exit_code=3, failure_kind=FailureKind.AGENT_FAILED)
    run, decision = step(run, seen(jobs={"todo-api-llm-gen-1": failed}))
    assert run.status is not None
    assert run.status.attempts[0].failure_kind == FailureKind.AGENT_FAILED
    assert [a.kind.value for a in decision.actions] == ["CreateGeneratorJob"]


def test_tests_that_fail_after_a_refusal_end_the_run_with_the_refusal() -> None:
    run, _ = step(agent_run(), seen())
    run = refused_on(run, 1, RefusalCode.RUN_CAP_REACHED)
    jobs = {
        "todo-api-llm-gen-1": JobObservation(JobState.SUCCEEDED, exit_code=0),
        "todo-api-llm-test-1": JobObservation(JobState.FAILED, exit_code=1),
    }
    observed = seen(jobs=jobs, generator_results={1: GEN_OK}, test_results={1: report(3, 2)})
    run, _ = step(run, observed)
    run, decision = step(run, observed)
    assert run.status is not None
    assert run.status.phase == "Failed"
    condition = find_condition(decision.status.conditions, "Succeeded")
    assert condition is not None
    assert condition.reason == "RunCapReached"
    assert run.status.attempts[0].failure_kind == FailureKind.TESTS_FAILED
    assert decision.actions == []


# ---------------------------------------------------------------- observing the pod


class _Pods:
    """A KubeClient's request() answering one Job and its pod."""

    def __init__(self, pod_status: dict[str, Any]) -> None:
        self.pod_status = pod_status

    async def request(self, method: str, path: str, query: Any = None) -> dict[str, Any]:
        if path.endswith("/jobs"):
            job = {
                "metadata": {"name": "todo-api-llm-gen-1"},
                "status": {"conditions": [{"type": "Failed", "status": "True"}]},
            }
            return {"items": [job]}
        pod = {"metadata": {"labels": {"job-name": "todo-api-llm-gen-1"}}}
        return {"items": [{**pod, "status": self.pod_status}]}


async def test_a_failed_prepare_or_launcher_is_read_from_the_init_containers() -> None:
    prepare_line = json.dumps(
        {"result": "Error", "detail": {"message": "snapshot sha256 does not match the pin"}}
    )
    status = {
        "phase": "Failed",
        "initContainerStatuses": [
            {"name": "prepare", "state": {"terminated": {"exitCode": 2, "message": prepare_line}}}
        ],
        "containerStatuses": [{"name": "generator", "state": {"waiting": {}}}],
    }
    run = agent_run()
    seen_jobs = await observe_jobs(_Pods(status), "team-a", run)  # type: ignore[arg-type]
    job = seen_jobs["todo-api-llm-gen-1"]
    assert (job.exit_code, job.message) == (2, "snapshot sha256 does not match the pin")
    killed = {
        "phase": "Failed",
        "initContainerStatuses": [
            {"name": "prepare", "state": {"terminated": {"exitCode": 0}}},
            {"name": "agent", "state": {"terminated": {"exitCode": 137, "reason": "Error"}}},
        ],
    }
    seen_jobs = await observe_jobs(_Pods(killed), "team-a", run)  # type: ignore[arg-type]
    job = seen_jobs["todo-api-llm-gen-1"]
    assert job.failure_kind is FailureKind.AGENT_FAILED
    assert job.message == "the agent container ended with exit code 137 before finish ran"
    oom = {
        "phase": "Failed",
        "initContainerStatuses": [
            {"name": "agent", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}
        ],
    }
    seen_jobs = await observe_jobs(_Pods(oom), "team-a", run)  # type: ignore[arg-type]
    assert seen_jobs["todo-api-llm-gen-1"].reason == "OOMKilled"


def test_only_images_a_platform_admin_allows_run_as_agents() -> None:
    allowed = dataclasses.replace(BASE_SETTINGS, agent_images=("registry.example/agents/*",))
    assert agent_image_allowed("registry.example/agents/aider:0.86.1", allowed)
    assert not agent_image_allowed("docker.io/someone/agent:latest", allowed)
    assert not agent_image_allowed("registry.example/agents/aider:0.86.1", BASE_SETTINGS)
    run, decision = step(agent_run(), seen(agent_image_allowed=False))
    assert run.status is not None
    assert run.status.phase == "Failed"
    condition = find_condition(decision.status.conditions, "Admitted")
    assert condition is not None
    assert condition.reason == "AgentImageNotAllowed"
    assert "registry.example/agents/aider:0.86.1" in condition.message
    assert decision.actions == []


# ---------------------------------------------------------------- the gateway's record


class _RunStatusWrites:
    """A KubeClient's merge_patch: records each write, or fails every one."""

    def __init__(self, fail: bool = False) -> None:
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.fail:
            raise KubeError(503, "ServiceUnavailable", "the API server is away")
        self.writes.append((path, body))
        return {}


def claims(attempt: int = 1) -> RunTokenClaims:
    return RunTokenClaims(
        namespace="team-a",
        run="todo-api-llm",
        run_uid="uid-1",
        attempt=attempt,
        budget="default",
        spec_revision=1,
        expires_at=2_000_000_000,
    )


async def test_the_gateway_writes_a_refusal_on_the_run_once_per_attempt_and_code() -> None:
    kube = _RunStatusWrites()
    cache = RunCache(kube, ttl_seconds=5)  # type: ignore[arg-type]
    exhausted = Refusal(RefusalCode.BUDGET_EXHAUSTED, Constraint.BUDGET_REMAINING, "12 left")
    for _ in range(9):  # an agent retrying the refused call
        await cache.record_refusal(claims(), exhausted)
    assert len(kube.writes) == 1
    path, body = kube.writes[0]
    assert path.endswith("/namespaces/team-a/generationruns/todo-api-llm/status")
    assert body["metadata"] == {"uid": "uid-1"}, "a re-created run of that name is not written"
    assert body["status"]["refusal"]["attempt"] == 1
    assert body["status"]["refusal"]["code"] == "budget_exhausted"
    assert body["status"]["refusal"]["message"] == "12 left"
    capped = Refusal(RefusalCode.RUN_CAP_REACHED, Constraint.RUN_CAP, "cap")
    await cache.record_refusal(claims(), capped)
    await cache.record_refusal(claims(attempt=2), exhausted)
    assert [w[1]["status"]["refusal"]["code"] for w in kube.writes] == [
        "budget_exhausted",
        "run_cap_reached",
        "budget_exhausted",
    ]
    broken = RunCache(_RunStatusWrites(fail=True), ttl_seconds=5)  # type: ignore[arg-type]
    await broken.record_refusal(claims(), exhausted)  # logged, not raised: the refusal stands
    assert broken.recorded_refusals == {}, "tried again on the next refusal"


def test_the_api_server_refuses_our_env_names_and_secret_looking_ones() -> None:
    document = run_document("generationrun-llm.yaml")
    document["spec"]["generator"] = {
        "backend": "agent",
        "model": "stub-model",
        "agent": {
            **AGENT,
            "env": [
                {"name": "openai_base_url", "value": "x"},
                {"name": "GH_TOKEN", "value": "y"},
                {"name": "AIDER_YES_ALWAYS", "value": "true"},
            ],
        },
    }
    assert cel_violations(CRDS["GenerationRun"], document) == [
        "generator.agent.env: this name is set by the operator; a run cannot override it",
        "generator.agent.env: the name says it holds a secret; secrets never go in a run (the "
        "agent reaches models through the gateway with the run token)",
    ]
    document["spec"]["generator"]["agent"]["env"] = [{"name": "AIDER_YES_ALWAYS", "value": "1"}]
    assert cel_violations(CRDS["GenerationRun"], document) == []
