"""A real coding agent nobody here wrote, as a GenerationRun's generator: Aider on the real node.

Contract: specs/CORE-004-generation-runs.md, "Agent backend"; specs/CORE-003 for what the
gateway charges. The agent is aider-chat from PyPI at the version pinned in
examples/agents/aider/Dockerfile, in the image built from it (tools/build-images.sh
agent-aider), run by the real kubelet and containerd between our prepare and finish steps,
under the sandbox's NetworkPolicy. Its model is the local OpenAI-compatible stub behind the
real gateway, scripted with canned answers in Aider's "whole" edit format: these tests check
the plumbing (streamed calls metered, files collected, tests run, refusals honoured), never
model quality.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.api.v1alpha1.creditbudget import CreditBudgetStatus
from smartspec.gateway.chat_request import prompt_token_bound
from smartspec.gateway.ledger_store import verify_budget_ledger
from smartspec.logic.pricing import cost_credits
from smartspec.storage import S3ObjectStore
from stubs.openai_stub import Reply, StubServer
from testcluster.gateway_calls import API, STUB_PRICE, create_budget, ledger_entries
from testcluster.harness import TEST_TOKEN_KEY, wait_for
from testcluster.plugin import Cluster
from testcluster.s3 import S3Endpoint

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
AGENT_IMAGES = '["ghcr.io/smartspec/example-agent-*"]'

CONFTEST = (
    "def pytest_configure(config):\n"
    '    config.addinivalue_line("markers", "requirement(id): requirement a test demonstrates")\n'
)
APP = (
    "TODOS = {}\n\n\n"
    "def create(title):\n"
    "    if not title:\n"
    '        raise ValueError("title is required")\n'
    "    item = {'id': len(TODOS) + 1, 'title': title, 'done': False}\n"
    "    TODOS[item['id']] = item\n"
    "    return item\n"
)
TESTS = (
    "import pytest\n\nfrom todo import create\n\n\n"
    '@pytest.mark.requirement("REQ-001")\n'
    "def test_create_returns_the_item():\n"
    "    assert create('milk')['title'] == 'milk'\n\n\n"
    '@pytest.mark.requirement("REQ-004")\n'
    "def test_a_new_item_is_not_done():\n"
    "    assert create('bread')['done'] is False\n"
)


def whole_format(files: dict[str, str]) -> str:
    """An answer in Aider's "whole" edit format: each path alone above its fenced listing."""
    parts = ["I will write the module, its tests and the pytest configuration.\n"]
    for path, content in files.items():
        parts.append(f"{path}\n```python\n{content}```\n")
    return "\n".join(parts)


HAPPY_ANSWER = whole_format({"todo.py": APP, "tests/test_todo.py": TESTS, "conftest.py": CONFTEST})
# A listing with no file name above it: Aider cannot apply it and asks the model again
# (one of its "reflections"): the second call of the attempt.
UNUSABLE_ANSWER = "Here is the code.\n\n```python\nprint('which file is this?')\n```\n"


@dataclass
class Agents:
    """A tenant, the gateway and an operator that allows the example agent images."""

    cluster: Cluster
    namespace: str
    stub: StubServer
    s3: S3Endpoint

    def run(self, name: str, **agent: Any) -> None:
        """The example's Aider run (its agent fields replaced by `agent`), two attempts."""
        document: dict[str, Any] = yaml.safe_load(
            (EXAMPLES / "agents" / "aider" / "generationrun.yaml").read_text()
        )
        document["metadata"]["name"] = name
        spec = document["spec"]
        spec["generator"]["model"] = "stub-model"
        spec["generator"]["agent"].update(agent)
        spec["maxAttempts"] = 2
        del spec["maxCredits"]
        self.cluster.rest("builder").post(f"{API}/{self.namespace}/generationruns", document)

    def finished(self, name: str) -> dict[str, Any]:
        path = f"{API}/{self.namespace}/generationruns/{name}"

        def done() -> dict[str, Any] | None:
            run: dict[str, Any] = self.cluster.rest("admin").get(path)
            phase = (run.get("status") or {}).get("phase")
            return run if phase in {"Succeeded", "Failed"} else None

        return wait_for(done, f"run {name} to finish", timeout=600)

    def entries(self, run_uid: str, kind: str) -> list[Any]:
        entries = ledger_entries(self.s3, self.cluster.rest("admin"), self.namespace)
        return [e for e in entries if e.kind == kind and e.run_uid == run_uid]

    def budget(self, name: str = "default") -> dict[str, Any]:
        path = f"{API}/{self.namespace}/creditbudgets/{name}"
        return dict(self.cluster.rest("admin").get(path))


@pytest.fixture
def agents(
    cluster: Cluster,
    tenant: str,
    local_node: Any,
    start_operator: Callable[..., Any],
    start_gateway: Callable[..., Any],
    stub: StubServer,
    s3: S3Endpoint,
    tmp_path: Path,
) -> Agents:
    if cluster.real_node is None:
        pytest.skip(
            "needs the real node: an agent pod runs three containers from two images, which "
            "the fake node (one host process per pod) cannot"
        )
    cluster.real_node.ensure_images("agent-aider")
    gateway = start_gateway()
    keys = tmp_path / "operator-token-keys"
    keys.write_bytes(TEST_TOKEN_KEY + b"\n")
    start_operator(
        tenant,
        SMARTSPEC_TOKEN_KEYS_FILE=str(keys),
        SMARTSPEC_GATEWAY_URL=f"{gateway.url}/v1",
        SMARTSPEC_GATEWAY_NAMESPACE="smartspec",
        SMARTSPEC_AGENT_IMAGES=AGENT_IMAGES,
    )
    spec = yaml.safe_load((EXAMPLES / "todo-service" / "spec.yaml").read_text())
    cluster.rest("builder").post(f"{API}/{tenant}/specs", spec)
    return Agents(cluster, tenant, stub, s3)


def stub_usage(request: dict[str, Any], reply: str) -> tuple[int, int]:
    """What the stub reports for one answer (its documented rule: characters // 4)."""
    prompt = sum(len(m["content"]) for m in request["messages"] if isinstance(m["content"], str))
    return max(1, prompt // 4), max(1, len(reply) // 4)


def test_aider_writes_the_project_its_tests_pass_and_its_streamed_call_is_charged(
    agents: Agents,
) -> None:
    create_budget(agents.cluster, agents.namespace, 50_000_000)
    agents.stub.script.append(Reply(HAPPY_ANSWER))
    agents.run("todo-aider")
    run = agents.finished("todo-aider")
    status = run["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[:4000]
    assert status["evidence"]["testsPassed"] == 2
    assert status["evidence"]["testsFailed"] == 0
    assert status["artifacts"]["fileCount"] == 3, "todo.py, tests/test_todo.py, conftest.py"

    # Aider's one call, streamed through the gateway, as the stub answered it.
    assert len(agents.stub.requests) == 1
    request = agents.stub.requests[0]
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}, "the gateway asks for usage"
    assert any("REQ-001" in m["content"] for m in request["messages"]), "the task reached it"

    uid = run["metadata"]["uid"]
    prompt, completion = stub_usage(request, HAPPY_ANSWER)
    (settled,) = wait_for(lambda: agents.entries(uid, "settle") or None, "the settle entry")
    assert (settled.prompt_tokens, settled.completion_tokens) == (prompt, completion)
    assert settled.settled_by == "usage"
    assert settled.credits == cost_credits(STUB_PRICE, prompt, completion) > 0
    assert settled.attempt == 1

    def usage_flushed() -> dict[str, Any] | None:
        run_now = agents.cluster.rest("admin").get(
            f"{API}/{agents.namespace}/generationruns/todo-aider"
        )
        usage = (run_now.get("status") or {}).get("usage") or {}
        return usage if usage.get("calls") == 1 else None

    usage = wait_for(usage_flushed, "the run's usage from the gateway")
    assert usage["credits"] == settled.credits
    print(f"aider run: {seconds(run)} s from POST to Succeeded, {settled.credits} credits")


def test_a_budget_cut_while_aider_streams_stops_it_at_its_second_call(
    agents: Agents,
) -> None:
    """The platform admin cuts the budget while the first call is in flight; Aider cannot
    use the answer and asks again; the gateway refuses (402) and records the refusal on the
    run; Aider retries on its own and gives up; the run ends BudgetExhausted, one attempt."""
    create_budget(agents.cluster, agents.namespace, 50_000_000)
    first_call = threading.Event()
    budget_cut = threading.Event()

    def hold_until_cut(body: dict[str, Any]) -> str:
        first_call.set()
        budget_cut.wait(timeout=15)
        return UNUSABLE_ANSWER

    agents.stub.script.append(Reply(hold_until_cut))
    agents.run("todo-aider-cut")
    assert first_call.wait(timeout=300), "Aider never called the model"
    # Below the smallest useful call at this prompt: the next call, whose prompt holds this
    # one's answer too, is refused.
    bound = prompt_token_bound(agents.stub.requests[0])
    limit = cost_credits(STUB_PRICE, bound, 16) - 1
    agents.cluster.rest("platform_admin").patch(
        f"{API}/{agents.namespace}/creditbudgets/default", {"spec": {"limitCredits": limit}}
    )
    # The gateway reads a budget's spec at most 5 s old: the second call must see the cut.
    time.sleep(6)
    budget_cut.set()

    run = agents.finished("todo-aider-cut")
    status = run["status"]
    assert status["phase"] == "Failed", json.dumps(status, indent=1)[:4000]
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "BudgetExhausted", succeeded
    assert [a["number"] for a in status["attempts"]] == [1], "no attempt after a refusal"
    assert status["attempts"][0]["failureKind"] == "GatewayRefused"
    assert status["refusal"]["code"] == "budget_exhausted"
    assert status["refusal"]["attempt"] == 1
    assert len(agents.stub.requests) == 1, "refused calls never reach the provider"

    uid = run["metadata"]["uid"]
    prompt, completion = stub_usage(agents.stub.requests[0], UNUSABLE_ANSWER)
    (settled,) = wait_for(lambda: agents.entries(uid, "settle") or None, "the settle entry")
    assert settled.credits == cost_credits(STUB_PRICE, prompt, completion) > 0
    refused = agents.entries(uid, "refuse")
    assert refused, "each of Aider's retries is a refusal in the ledger"
    assert all(e.credits == 0 and "budget_exhausted" in e.detail for e in refused)

    store = S3ObjectStore(
        agents.s3.bucket, endpoint_url=agents.s3.endpoint_url, client=agents.s3.client("admin")
    )
    budget_status = CreditBudgetStatus.model_validate(agents.budget()["status"])
    report = verify_budget_ledger(store, budget_status)
    assert report.ok, report.problems
    assert budget_status.spent_credits == settled.credits
    print(
        f"aider budget cut: {seconds(run)} s from POST to Failed, {len(refused)} refusals, "
        f"{settled.credits} credits for the one call that went through"
    )


def seconds(run: dict[str, Any]) -> int:
    """From the run's creation to its completion, as the API server recorded them."""
    created = datetime.fromisoformat(run["metadata"]["creationTimestamp"])
    done = datetime.fromisoformat(run["status"]["completionTime"])
    return int((done - created).total_seconds())


# Attempt 1 writes a file and fails; attempt 2 finds it restored and hangs past its timeout.
# No $(...) in it: the kubelet would expand that.
FAILING_AGENT = (
    "if [ -e todo.py ]; then echo 'todo.py is back; thinking forever'; sleep 300; "
    "else printf 'def create(title):\\n    return title\\n' > todo.py; "
    "echo 'giving up' >&2; exit 7; fi"
)


def test_an_agent_that_fails_then_hangs_ends_each_attempt_with_its_kind(agents: Agents) -> None:
    """The same image, another command: exit 7 after writing a file (AgentFailed, the file
    fed back), then stopped at its 30 s timeout (AgentTimeout). No model call is made."""
    create_budget(agents.cluster, agents.namespace, 50_000_000)
    agents.run("todo-agent-fails", command=["sh", "-c", FAILING_AGENT], args=[], timeoutSeconds=30)
    run = agents.finished("todo-agent-fails")
    status = run["status"]
    assert status["phase"] == "Failed", json.dumps(status, indent=1)[:4000]
    first, second = status["attempts"]
    assert first["failureKind"] == "AgentFailed"
    assert "the agent exited 7" in first["message"]
    assert second["failureKind"] == "AgentTimeout", "attempt 2 found attempt 1's file"
    assert "stopped at its timeout" in second["message"]
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "AgentTimeout"
    assert agents.stub.requests == []
    assert status["usage"]["credits"] == 0
    print(f"failing agent: {seconds(run)} s from POST to Failed over two attempts")
