"""The generate → test loop against what real models do: every way an attempt fails becomes
feedback, and the next attempt calls the model again.

Contract: specs/CORE-004-generation-runs.md, section "Feedback". The real operator, API
server, Job controller, gateway, S3 and node run the pipeline; the model is the local
OpenAI-compatible stub scripted with canned answers (tests/stubs/model_faults.py). They
test the loop's plumbing, never model quality.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from stubs import model_faults
from stubs.openai_stub import Reply, ScriptItem, StubServer
from testcluster.gateway_calls import API, ledger_entries
from testcluster.harness import TEST_TOKEN_KEY, wait_for
from testcluster.plugin import Cluster
from testcluster.s3 import S3Endpoint

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "todo-service"
FAKE_KEY = "AKIAQWERTYUIOPASDFGH"


@dataclass
class Loop:
    """A tenant with a budget, the example Spec, a gateway and an operator."""

    cluster: Cluster
    namespace: str
    stub: StubServer
    s3: S3Endpoint

    def run(
        self,
        name: str,
        script: list[ScriptItem],
        *,
        max_attempts: int,
        timeouts: dict[str, int] | None = None,
        **generator: Any,
    ) -> dict[str, Any]:
        """Apply an llm run whose model calls answer `script` in order; its final status."""
        self.stub.script.extend(script)
        document: dict[str, Any] = yaml.safe_load((EXAMPLE / "generationrun-llm.yaml").read_text())
        document["metadata"]["name"] = name
        spec = document["spec"]
        spec["generator"].update(model="stub-model", maxTokens=60_000, repairTurns=0)
        spec["generator"].update(generator)
        spec["sandbox"] = {}
        spec["maxAttempts"] = max_attempts
        if timeouts is not None:
            spec["timeouts"] = timeouts
        del spec["maxCredits"]
        self.cluster.rest("builder").post(f"{API}/{self.namespace}/generationruns", document)
        return self.finished(name)

    def finished(self, name: str) -> dict[str, Any]:
        path = f"{API}/{self.namespace}/generationruns/{name}"

        def done() -> dict[str, Any] | None:
            status: dict[str, Any] = self.cluster.rest("admin").get(path).get("status") or {}
            return status if status.get("phase") in {"Succeeded", "Failed"} else None

        return wait_for(done, f"run {name} to finish", timeout=300)

    def prompts(self) -> list[str]:
        """The user message of every model call the stub received."""
        return [
            next(m["content"] for m in request["messages"] if m["role"] == "user")
            for request in self.stub.requests
        ]

    def charges(self, run_uid: str) -> list[tuple[int, int]]:
        """(attempt, credits) of every settled call of one run, from the ledger."""

        def settled() -> list[tuple[int, int]] | None:
            entries = ledger_entries(self.s3, self.cluster.rest("admin"), self.namespace)
            found = [
                (e.attempt or 0, e.credits)
                for e in entries
                if e.kind == "settle" and e.run_uid == run_uid
            ]
            return sorted(found) if len(found) == len(self.stub.requests) else None

        return wait_for(settled, "every call's settle entry in the ledger")


@pytest.fixture
def loop(
    cluster: Cluster,
    tenant: str,
    local_node: Any,
    start_operator: Callable[..., Any],
    start_gateway: Callable[..., Any],
    stub: StubServer,
    s3: S3Endpoint,
    tmp_path: Path,
) -> Loop:
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
            "spec": {"limitCredits": 50_000_000},
        },
    )
    spec = yaml.safe_load((EXAMPLE / "spec.yaml").read_text())
    cluster.rest("builder").post(f"{API}/{tenant}/specs", spec)
    return Loop(cluster, tenant, stub, s3)


def run_uid(loop: Loop, name: str) -> str:
    run = loop.cluster.rest("admin").get(f"{API}/{loop.namespace}/generationruns/{name}")
    return str(run["metadata"]["uid"])


# What the next prompt must say for each kind of answer fault, besides the kind itself.
ANSWER_FAULTS: dict[str, tuple[Callable[[], Reply], str, list[str]]] = {
    "prose": (model_faults.prose, "AnswerNotParseable", ["The answer began and ended like"]),
    "invalid-json": (model_faults.invalid_json, "AnswerNotParseable", ["not valid JSON"]),
    "wrong-schema": (model_faults.wrong_schema, "AnswerInvalid", ['no "files" array']),
    "truncated": (model_faults.truncated, "AnswerTruncated", ["cut off at maxTokens"]),
    "empty": (model_faults.empty, "AnswerEmpty", ["no text"]),
    "not-compiling": (
        model_faults.not_compiling,
        "CodeDoesNotCompile",
        ["app.py:", "=== app.py"],
    ),
    "credential": (
        model_faults.credential,
        "CredentialDetected",
        ["(AwsAccessKeyId)", "[REDACTED:AwsAccessKeyId]", "=== app.py"],
    ),
    "failing-tests": (
        model_faults.failing_tests,
        "TestsFailed",
        ["Tests: ", "failed", "=== app.py", "Requirements without a passing test"],
    ),
}


@pytest.mark.parametrize("fault", sorted(ANSWER_FAULTS))
def test_an_attempt_that_fails_feeds_the_next_one_which_calls_the_model_again(
    loop: Loop, fault: str
) -> None:
    reply, kind, expected = ANSWER_FAULTS[fault]
    status = loop.run("todo-api-llm", [reply(), model_faults.correct()], max_attempts=2)

    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    first, second = status["attempts"]
    assert (first["failureKind"], first["reason"]) == (kind, kind)
    assert first["message"]
    assert second["result"] == "Passed"
    assert "failureKind" not in second
    first_prompt, second_prompt = loop.prompts()
    assert "Attempt 1 failed" not in first_prompt
    assert f"Attempt 1 failed ({kind})." in second_prompt
    for text in expected:
        assert text in second_prompt, f"{text!r} is not in the next prompt"
    assert FAKE_KEY not in second_prompt, "a credential never goes back to the model"
    # Each call is charged once, to its attempt, at what its answer reports.
    charges = loop.charges(run_uid(loop, "todo-api-llm"))
    assert [attempt for attempt, _ in charges] == [1, 2]
    assert all(credits > 0 for _, credits in charges)
    usage = loop.cluster.rest("admin").get(f"{API}/{loop.namespace}/generationruns/todo-api-llm")[
        "status"
    ]["usage"]
    assert usage["calls"] == 2
    assert usage["credits"] == sum(credits for _, credits in charges)


def test_three_attempts_malformed_then_failing_then_passing_end_succeeded(loop: Loop) -> None:
    started = time.monotonic()
    script: list[ScriptItem] = [
        model_faults.prose(),
        model_faults.failing_tests(),
        model_faults.correct(),
    ]
    status = loop.run("todo-api-llm", script, max_attempts=3)
    seconds = time.monotonic() - started
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    assert [a.get("failureKind") for a in status["attempts"]] == [
        "AnswerNotParseable",
        "TestsFailed",
        None,
    ]
    assert [a["result"] for a in status["attempts"]] == ["Error", "Failed", "Passed"]
    prompts = loop.prompts()
    assert "Attempt 1 failed (AnswerNotParseable)." in prompts[1]
    assert "Attempt 2 failed (TestsFailed)." in prompts[2]
    assert [a for a, _ in loop.charges(run_uid(loop, "todo-api-llm"))] == [1, 2, 3]
    print(f"\nthree-attempt run: apply -> Succeeded in {seconds:.1f} s")


def test_a_run_that_uses_every_attempt_fails_with_the_last_kind(loop: Loop) -> None:
    script: list[ScriptItem] = [model_faults.failing_tests(), model_faults.prose()]
    status = loop.run("todo-api-llm", script, max_attempts=2)
    assert status["phase"] == "Failed"
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "AnswerNotParseable"
    assert succeeded["message"].endswith("no attempts left (2)")
    row = loop.cluster.rest("admin").table(f"{API}/{loop.namespace}/generationruns/todo-api-llm")
    names = [column["name"] for column in row["columnDefinitions"]]
    assert row["rows"][0]["cells"][names.index("Last-Failure")] == "AnswerNotParseable"
    events = loop.cluster.rest("admin").get(f"/api/v1/namespaces/{loop.namespace}/events")
    warnings = [
        e["reason"]
        for e in events["items"]
        if e["involvedObject"]["name"] == "todo-api-llm"
        and e["type"] == "Warning"
        and e["reason"] != "SpecNotReady"  # when the run came before the Spec's snapshot
    ]
    # One Event per failed attempt; the final one repeats the last kind as the run's end.
    assert sorted(warnings) == ["AnswerNotParseable", "AnswerNotParseable", "TestsFailed"]


def test_a_repair_turn_fixes_an_answer_inside_the_attempt(loop: Loop) -> None:
    status = loop.run(
        "todo-api-llm",
        [model_faults.invalid_json(), model_faults.correct()],
        max_attempts=1,
        repairTurns=1,
    )
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    assert len(status["attempts"]) == 1
    repair = loop.stub.requests[1]["messages"]
    assert [m["role"] for m in repair] == ["system", "user", "assistant", "user"]
    assert repair[3]["content"].startswith("That answer cannot be used (AnswerNotParseable)")
    # Both calls are metered and ledgered, on the one attempt.
    assert loop.charges(run_uid(loop, "todo-api-llm"))[0][0] == 1
    assert [a for a, _ in loop.charges(run_uid(loop, "todo-api-llm"))] == [1, 1]


def test_a_model_that_cannot_be_reached_costs_nothing_and_the_next_attempt_calls_again(
    loop: Loop,
) -> None:
    # numRetries 1 and a fallback to stub-backup: four upstream requests for one call.
    script: list[ScriptItem] = [500, 500, 429, 500, model_faults.correct()]
    status = loop.run("todo-api-llm", script, max_attempts=2)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    assert status["attempts"][0]["failureKind"] == "ModelUnavailable"
    assert len(loop.stub.requests) == 5
    entries = ledger_entries(loop.s3, loop.cluster.rest("admin"), loop.namespace)
    uid = run_uid(loop, "todo-api-llm")
    kinds = [(e.attempt, e.kind) for e in entries if e.run_uid == uid and e.kind != "reserve"]
    assert (1, "release") in kinds, "the failed call's reservation is released, not charged"
    assert [a for a, k in kinds if k == "settle"] == [2]


def test_a_test_run_past_its_time_limit_is_stopped_and_fed_back(loop: Loop) -> None:
    status = loop.run(
        "todo-api-llm",
        [model_faults.hanging_tests(), model_faults.correct()],
        max_attempts=2,
        timeouts={"attemptSeconds": 60, "totalSeconds": 600},
    )
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    assert status["attempts"][0]["failureKind"] == "TestTimeout"
    assert "Attempt 1 failed (TestTimeout)." in loop.prompts()[1]


def test_a_tester_killed_without_a_report_feeds_back_the_files_only(loop: Loop) -> None:
    status = loop.run(
        "todo-api-llm", [model_faults.kills_tester(), model_faults.correct()], max_attempts=2
    )
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:3000]
    first = status["attempts"][0]
    assert first["failureKind"] == "SandboxError"
    assert "feedbackDigest" not in first, "no report exists, so none is offered"
    prompt = loop.prompts()[1]
    assert "Attempt 1 failed (SandboxError)." in prompt
    assert "=== conftest.py" in prompt
    assert "Test result:" not in prompt
