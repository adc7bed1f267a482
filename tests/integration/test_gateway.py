"""The LLM gateway against the real API server, real HTTP S3 and a local OpenAI-compatible
stub model server (its answers are canned: nothing here measures model quality).

Contract: specs/CORE-003-gateway-and-budgets.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from smartspec.logic.pricing import ModelPrice, cost_credits
from stubs.openai_stub import StubServer
from testcluster.gateway_calls import (
    API,
    STUB_PRICE,
    budget_status,
    charge,
    chat,
    create_budget,
    create_run,
    settled,
    token_for,
    verify_ledger,
)
from testcluster.harness import GatewayProcess, wait_for, write_gateway_config
from testcluster.plugin import Cluster

pytestmark = pytest.mark.integration

StartGateway = Callable[..., GatewayProcess]


def test_a_call_is_charged_once_recorded_and_attributed(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    s3_client: Any,
    s3: Any,
) -> None:
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    gateway = start_gateway()
    status, body, _ = chat(gateway, token_for(run))
    assert status == 200, body
    assert body["model"] == "stub-model"
    assert stub.requests[-1]["max_tokens"] == 64

    admin = cluster.rest("admin")
    budget = settled(admin, tenant)
    assert budget["spentCredits"] == charge(body)
    assert budget["ledgerHead"]["sequence"] >= 2  # reserve + settle
    usage = wait_for(
        lambda: (admin.get(f"{API}/{tenant}/generationruns/run-1").get("status") or {}).get(
            "usage"
        ),
        "the run's usage",
    )
    assert usage == {
        "calls": 1,
        "promptTokens": body["usage"]["prompt_tokens"],
        "completionTokens": body["usage"]["completion_tokens"],
        "credits": charge(body),
    }
    assert "ledger OK" in verify_ledger(cluster, tenant, gateway)
    transcripts = s3_client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{tenant}/transcripts/")
    assert transcripts.get("KeyCount") == 1


def test_tool_calls_reach_the_model_and_come_back(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer
) -> None:
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    gateway = start_gateway()
    tool = {
        "type": "function",
        "function": {
            "name": "write_file",
            "description": "Write one file of the generated project.",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
    status, body, _ = chat(gateway, token_for(run), tools=[tool], tool_choice="auto")
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "write_file"
    assert stub.requests[-1]["tools"] == [tool]
    assert stub.requests[-1]["tool_choice"] == "auto"
    assert settled(cluster.rest("admin"), tenant)["spentCredits"] == charge(body)


def run_reads(cluster: Cluster) -> float:
    """GETs of GenerationRuns the API server has answered so far (its own metric)."""
    total = 0.0
    for line in cluster.rest("admin").text("/metrics").splitlines():
        if (
            line.startswith("apiserver_request_total{")
            and 'resource="generationruns"' in line
            and 'verb="GET"' in line
            and 'subresource=""' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_calls_arriving_together_share_one_read_of_their_run(
    cluster: Cluster, tenant: str, start_gateway: StartGateway
) -> None:
    create_budget(cluster, tenant, 10**9)
    run = create_run(cluster, tenant)
    gateway = start_gateway()
    token = token_for(run)
    before = run_reads(cluster)
    started = time.monotonic()

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:
            replies = await asyncio.gather(
                *(
                    client.post(
                        f"{gateway.url}/v1/chat/completions",
                        json={
                            "model": "stub-model",
                            "messages": [{"role": "user", "content": f"call {index}"}],
                            "max_tokens": 16,
                        },
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    for index in range(32)
                )
            )
        return [reply.status_code for reply in replies]

    assert asyncio.run(burst()) == [200] * 32
    elapsed = time.monotonic() - started
    reads = run_reads(cluster) - before
    # The run cache lives 1 s and is read ahead after half of it: at most one read per half
    # second, not one per call.
    assert reads <= 1 + math.ceil(elapsed / 0.5), f"{reads:.0f} reads of the run in {elapsed:.1f} s"


def test_concurrent_replicas_never_overspend(
    cluster: Cluster, tenant: str, start_gateway: StartGateway
) -> None:
    limit = 3_500
    create_budget(cluster, tenant, limit, softThresholdsPercent=[50])
    run = create_run(cluster, tenant)
    token = token_for(run)
    gateways = [start_gateway() for _ in range(4)]
    admin = cluster.rest("admin")

    violations: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            status = budget_status(admin, tenant)
            if status.get("spentCredits", 0) + status.get("reservedCredits", 0) > limit:
                violations.append(status)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    results = asyncio.run(_burst(gateways, token, calls=1000, concurrency=48))
    stop.set()
    watcher.join()

    unexpected = [(status, body) for status, body in results if status not in {200, 402}]
    assert unexpected == [], unexpected[:3]
    ok = [body for status, body in results if status == 200]
    refused = [body for status, body in results if status == 402]
    assert ok, "no call succeeded"
    assert refused, "the budget never ran out: size it smaller"
    for body in refused:
        error = body["error"]
        assert error["type"] == "budget_exceeded"
        assert error["remaining_credits"] < error["required_credits"]
    assert violations == [], f"spent + reserved exceeded the limit: {violations[:3]}"

    final = settled(admin, tenant)
    assert final["spentCredits"] <= limit
    assert final["spentCredits"] == sum(charge(body) for body in ok), "every credit is a call"
    assert final["reservations"] == [] or "reservations" not in final
    assert "ledger OK" in verify_ledger(cluster, tenant, gateways[0])
    print(
        f"\nconcurrency: {len(ok)} answered, {len(refused)} refused, spent {final['spentCredits']}"
        f" of {limit} ({100 * final['spentCredits'] // limit}%), ledger entries "
        f"{final['ledgerHead']['sequence']}"
    )


async def _burst(
    gateways: list[GatewayProcess], token: str, *, calls: int, concurrency: int
) -> list[tuple[int, dict[str, Any]]]:
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=120) as client:

        async def one(index: int) -> tuple[int, dict[str, Any]]:
            gateway = gateways[index % len(gateways)]
            body = {
                "model": "stub-model",
                "messages": [{"role": "user", "content": f"Write function number {index}."}],
                "max_tokens": 64,
            }
            async with semaphore:
                response = await client.post(
                    f"{gateway.url}/v1/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                )
            return response.status_code, response.json()

        return await asyncio.gather(*(one(index) for index in range(calls)))


def test_tenants_are_isolated(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, namespace_factory: Callable[[], str]
) -> None:
    other = namespace_factory()
    create_budget(cluster, tenant, 100_000)
    create_budget(cluster, other, 100_000)
    run_a = create_run(cluster, tenant, "run-a")
    run_b = create_run(cluster, other, "run-b")
    gateway = start_gateway()
    admin = cluster.rest("admin")

    status, _, _ = chat(gateway, token_for(run_a))
    assert status == 200
    assert settled(admin, tenant)["spentCredits"] > 0
    assert budget_status(admin, other).get("spentCredits", 0) == 0, "A's call charged B"

    token_a, token_b = token_for(run_a), token_for(run_b)
    forged = token_a.rsplit(".", 1)[0].replace(token_a.split(".")[1], token_b.split(".")[1])
    forged += "." + token_a.rsplit(".", 1)[1]
    cases = {
        "run of A claimed in B": (token_for(run_a, namespace=other), 403, "run_not_found"),
        "B's claims under A's signature": (forged, 401, "bad_signature"),
        "wrong key": (token_for(run_a, key=b"x" * 40), 401, "bad_signature"),
        "expired": (token_for(run_a, ttl=-5), 401, "expired"),
        "garbage": ("not-a-token", 401, "malformed"),
    }
    for label, (token, expected_status, code) in cases.items():
        status, body, _ = chat(gateway, token)
        assert (status, body["error"]["code"]) == (expected_status, code), label

    # A transcript recorded in B is not there for a replay in A.
    status, _, _ = chat(gateway, token_b, content="only in B")
    assert status == 200
    replay = create_run(cluster, tenant, "replay-a", replayOf={"name": "run-a"})
    status, body, _ = chat(gateway, token_for(replay, replay_of="run-a"), content="only in B")
    assert (status, body["error"]["code"]) == (404, "transcript_not_found")

    cluster.rest("builder").patch(
        f"{API}/{tenant}/generationruns/run-a", {"spec": {"suspend": True}}
    )
    time.sleep(1.2)  # the gateway reuses a run read for up to a second
    status, body, _ = chat(gateway, token_a)
    assert (status, body["error"]["code"]) == (403, "run_suspended")


def transport_config(tmp_path: Path, stub: StubServer, transport: str, **options: Any) -> str:
    """A gateway configuration whose stub deployments use `transport`; its path."""
    path = tmp_path / f"gateway-{transport}.yaml"
    return str(write_gateway_config(path, stub.url, transport=transport, **options))


@pytest.mark.parametrize("transport", ["litellm", "openai-compatible"])
def test_provider_failures_retry_fall_back_and_release(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    tmp_path: Path,
    transport: str,
) -> None:
    create_budget(cluster, tenant, 100_000)
    run = create_run(cluster, tenant)
    gateway = start_gateway(SMARTSPEC_GATEWAY_CONFIG=transport_config(tmp_path, stub, transport))
    admin = cluster.rest("admin")

    stub.script.extend([429, 500])  # first try and its retry fail: fall back to stub-backup
    status, body, _ = chat(gateway, token_for(run))
    assert status == 200, body
    asked = [request["model"] for request in stub.requests]
    assert asked == ["stub-model", "stub-model", "stub-backup"], asked
    spent = settled(admin, tenant)["spentCredits"]
    assert spent == charge(body, STUB_PRICE), "priced as the model asked for"

    stub.fail_models.update({"stub-model": 500, "stub-backup": 503})
    status, body, _ = chat(gateway, token_for(run))
    assert status == 502, body
    assert body["error"]["type"] == "upstream_error"
    assert "nothing was charged" in body["error"]["message"]
    after = settled(admin, tenant)
    assert after["spentCredits"] == spent, "a failed call costs nothing"
    assert "ledger OK" in verify_ledger(cluster, tenant, gateway)


def test_openai_compatible_routes_send_the_request_as_sent(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer, tmp_path: Path
) -> None:
    """The gateway's own HTTP request under the Router: what the client sent reaches the
    server unchanged (bar the granted max_tokens), answers come back whole, and a server
    that answers garbage, too late or not at all is retried, fallen back from, released."""
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    config = transport_config(tmp_path, stub, "openai-compatible", timeout_seconds=1)
    gateway = start_gateway(SMARTSPEC_GATEWAY_CONFIG=config)
    admin = cluster.rest("admin")
    tool = {"type": "function", "function": {"name": "write_file", "parameters": {}}}
    sent: dict[str, Any] = {
        "tools": [tool],
        "tool_choice": "auto",
        "temperature": 0.25,
        "seed": 7,
        "stop": ["END"],
        "user": "builder-1",
        "reasoning_effort": "low",
        "response_format": {"type": "text"},
    }
    status, body, _ = chat(gateway, token_for(run), **sent)
    assert status == 200, body
    received = stub.requests[-1]
    assert {key: received.get(key) for key in sent} == sent
    assert (received["model"], received["max_tokens"]) == ("stub-model", 64)
    assert set(received) == {*sent, "model", "messages", "max_tokens"}
    # Sent by the gateway's own client (aiohttp), not the OpenAI SDK under litellm.
    assert "aiohttp" in stub.request_headers[-1]["User-Agent"]
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "write_file"
    assert body["usage"]["total_tokens"] > 0
    spent = settled(admin, tenant)["spentCredits"]
    assert spent == charge(body)

    stub.requests.clear()
    stub.script.extend(["not-json", "not-json"])  # try and retry: fall back to the backup
    status, body, _ = chat(gateway, token_for(run))
    assert status == 200, body
    assert [r["model"] for r in stub.requests] == ["stub-model", "stub-model", "stub-backup"]
    spent += charge(body)
    assert settled(admin, tenant)["spentCredits"] == spent

    stub.delay_seconds = 1.5  # past every deployment's 1 s timeout
    status, body, _ = chat(gateway, token_for(run))
    assert (status, body["error"]["code"]) == (504, "timeout"), body
    assert "nothing was charged" in body["error"]["message"]
    stub.delay_seconds = 0
    assert settled(admin, tenant)["spentCredits"] == spent
    assert "ledger OK" in verify_ledger(cluster, tenant, gateway)


@pytest.mark.parametrize(
    ("primary", "backup"), [("openai-compatible", "litellm"), ("litellm", "openai-compatible")]
)
def test_fallbacks_cross_transports(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    tmp_path: Path,
    primary: str,
    backup: str,
) -> None:
    """A route on one transport falls back to a route on the other, and is charged once."""
    create_budget(cluster, tenant, 100_000)
    run = create_run(cluster, tenant)
    config = tmp_path / "mixed.yaml"
    write_gateway_config(config, stub.url, transport=primary, backup_transport=backup)
    gateway = start_gateway(SMARTSPEC_GATEWAY_CONFIG=str(config))

    stub.fail_models["stub-model"] = 500
    status, body, _ = chat(gateway, token_for(run), temperature=0.5)
    assert status == 200, body
    assert [r["model"] for r in stub.requests] == ["stub-model", "stub-model", "stub-backup"]
    assert stub.requests[-1]["temperature"] == 0.5
    agents = [headers["User-Agent"] for headers in stub.request_headers]
    by_gateway = ["aiohttp" in agent for agent in agents]
    assert by_gateway == [primary != "litellm"] * 2 + [backup != "litellm"], agents
    assert body["model"] == "stub-model"
    assert settled(cluster.rest("admin"), tenant)["spentCredits"] == charge(body)
    assert "ledger OK" in verify_ledger(cluster, tenant, gateway)


@pytest.mark.parametrize("transport", ["litellm", "openai-compatible"])
def test_an_answer_without_token_usage_is_charged_its_reservation(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    tmp_path: Path,
    transport: str,
) -> None:
    """Tokens were spent but not counted: the worst case reserved is charged, never 0."""
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    gateway = start_gateway(SMARTSPEC_GATEWAY_CONFIG=transport_config(tmp_path, stub, transport))
    admin = cluster.rest("admin")

    stub.script.append("no-usage")
    status, body, _ = chat(gateway, token_for(run))
    assert status == 200, body
    # The bound the gateway reserved for this prompt: 16 + 8 per message + its JSON bytes.
    prompt_bound = 16 + 8 + len(json.dumps("Write a to-do API."))
    reserved = cost_credits(STUB_PRICE, prompt_bound, 64)
    assert settled(admin, tenant)["spentCredits"] == reserved
    usage = wait_for(
        lambda: (admin.get(f"{API}/{tenant}/generationruns/run-1").get("status") or {}).get(
            "usage"
        ),
        "the run's usage",
    )
    assert usage == {
        "calls": 1,
        "promptTokens": prompt_bound,
        "completionTokens": 64,
        "credits": reserved,
    }
    assert gateway.metric("smartspec_unreported_usage_total", model="stub-model") == 1
    assert "ledger OK" in verify_ledger(cluster, tenant, gateway)

    status, body, _ = chat(gateway, token_for(run))  # the next answer reports its usage
    assert status == 200, body
    assert settled(admin, tenant)["spentCredits"] == reserved + charge(body)


def test_an_unreachable_openai_compatible_server_costs_nothing(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, tmp_path: Path
) -> None:
    create_budget(cluster, tenant, 100_000)
    run = create_run(cluster, tenant)
    closed = tmp_path / "closed.yaml"
    write_gateway_config(closed, "http://127.0.0.1:9", transport="openai-compatible")
    gateway = start_gateway(SMARTSPEC_GATEWAY_CONFIG=str(closed))
    status, body, _ = chat(gateway, token_for(run))
    assert (status, body["error"]["code"]) == (502, "unreachable"), body
    assert "127.0.0.1:9" in body["error"]["message"]
    assert settled(cluster.rest("admin"), tenant).get("spentCredits", 0) == 0


def test_replay_reproduces_a_run_byte_for_byte_at_no_cost(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer
) -> None:
    create_budget(cluster, tenant, 100_000)
    live = create_run(cluster, tenant, "live")
    gateway = start_gateway()
    prompts = ["Plan the files.", "Write app.py.", "Write test_app.py."]
    recorded = [chat(gateway, token_for(live), content=prompt) for prompt in prompts]
    assert all(status == 200 for status, _, _ in recorded)
    admin = cluster.rest("admin")
    spent = settled(admin, tenant)["spentCredits"]
    wait_for(lambda: len(stub.requests) == 3, "three upstream calls")

    replay = create_run(cluster, tenant, "replay", replayOf={"name": "live"})
    token = token_for(replay, replay_of="live")
    time.sleep(0.5)  # transcripts are stored just after each answer
    replayed = [chat(gateway, token, content=prompt) for prompt in prompts]
    assert [raw for _, _, raw in replayed] == [raw for _, _, raw in recorded]
    assert len(stub.requests) == 3, "a replay never calls the provider"
    status, body, _ = chat(gateway, token, content="never recorded")
    assert (status, body["error"]["code"]) == (404, "transcript_not_found")
    assert len(stub.requests) == 3
    assert settled(admin, tenant)["spentCredits"] == spent, "a replay costs nothing"


def test_malformed_requests_get_clear_errors_and_cost_nothing(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer
) -> None:
    create_budget(
        cluster,
        tenant,
        100_000,
        models={"allow": ["stub-*", "unpriced-*"], "deny": ["stub-backup"]},
    )
    run = create_run(cluster, tenant)
    gateway = start_gateway()
    token = token_for(run)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    url = f"{gateway.url}/v1/chat/completions"

    def post(content: bytes) -> tuple[int, dict[str, Any]]:
        response = httpx.post(url, content=content, headers=headers, timeout=30)
        return response.status_code, response.json()

    def body(**fields: Any) -> bytes:
        base = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}
        return json.dumps(base | fields).encode()

    cases = {
        "not JSON": (b"{nope", 400, "invalid_json"),
        "a list": (b"[]", 400, "invalid_json"),
        "huge": (
            body(messages=[{"role": "user", "content": "x" * 2_000_000}]),
            413,
            "body_too_large",
        ),
        "unknown model": (body(model="gpt-99"), 404, "model_not_found"),
        "stream options without a stream": (
            body(stream_options={"include_usage": True}),
            400,
            "invalid_request",
        ),
        "unknown stream option": (
            body(stream=True, stream_options={"include_obfuscation": False}),
            400,
            "unsupported_parameter",
        ),
        "no messages": (body(messages=[]), 400, "invalid_request"),
        "bad role": (body(messages=[{"role": "wizard", "content": "x"}]), 400, "invalid_request"),
        "float max_tokens": (body(max_tokens=10.5), 400, "invalid_request"),
        "unpriced model": (body(model="unpriced-model"), 400, "model_not_priced"),
        "denied model": (body(model="stub-backup"), 403, "model_not_allowed"),
        # litellm keyword arguments that would route around the model policy or the provider
        "request fallbacks": (body(fallbacks=["stub-backup"]), 400, "unsupported_parameter"),
        "request api_base": (body(api_base="http://elsewhere"), 400, "unsupported_parameter"),
        "mock answer": (body(mock_response="free"), 400, "unsupported_parameter"),
        "price tier": (body(service_tier="priority"), 400, "unsupported_parameter"),
        "mcp tool": (
            body(tools=[{"type": "mcp", "server_url": "http://elsewhere"}]),
            400,
            "unsupported_tool",
        ),
        "nameless tool": (
            body(tools=[{"type": "function", "function": {}}]),
            400,
            "invalid_request",
        ),
    }
    for label, (content, status, code) in cases.items():
        got_status, got = post(content)
        assert (got_status, got["error"]["code"]) == (status, code), (label, got)
        assert got["error"]["message"], label
    response = httpx.post(url, content=body(), timeout=30)
    assert (response.status_code, response.json()["error"]["code"]) == (401, "missing_token")
    assert stub.requests == [], "no malformed request reached the provider"
    time.sleep(1.5)
    assert budget_status(cluster.rest("admin"), tenant).get("spentCredits", 0) == 0


def test_a_body_that_arrives_in_pieces_is_read_whole(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer
) -> None:
    """Over a real network a body crosses in several segments; one read returns only the
    first (seen on the real node: an attempt's prompt cut at 1,777 bytes, HTTP 400)."""
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    gateway = start_gateway()
    prompt = "long prompt " * 2_000
    content = json.dumps(
        {"model": "stub-model", "messages": [{"role": "user", "content": prompt}]}
    ).encode()

    def pieces() -> Any:
        for start in range(0, len(content), 1_000):
            yield content[start : start + 1_000]
            time.sleep(0.01)

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=pieces(),
        headers={"Authorization": f"Bearer {token_for(run)}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert stub.requests[-1]["messages"][0]["content"] == prompt


def test_a_missing_budget_fails_closed(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer
) -> None:
    run = create_run(cluster, tenant)
    gateway = start_gateway()
    status, body, _ = chat(gateway, token_for(run))
    assert (status, body["error"]["type"], body["error"]["code"]) == (
        402,
        "budget_exceeded",
        "budget_not_found",
    )
    assert stub.requests == []


def test_thresholds_and_exhaustion_become_conditions_and_events(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    start_operator: Callable[[str], Any],
) -> None:
    create_budget(cluster, tenant, 200, softThresholdsPercent=[25])
    run = create_run(cluster, tenant)
    start_operator(tenant)
    gateway = start_gateway()
    token = token_for(run)
    statuses = [chat(gateway, token, content=f"call {index}")[0] for index in range(40)]
    assert 402 in statuses, "the budget never ran out"
    admin = cluster.rest("admin")

    def condition(kind: str) -> dict[str, Any] | None:
        budget = admin.get(f"{API}/{tenant}/creditbudgets/default")
        for item in (budget.get("status") or {}).get("conditions", []):
            if item["type"] == kind and item["status"] == "True":
                return dict(item)
        return None

    reached = wait_for(lambda: condition("ThresholdReached"), "ThresholdReached=True")
    assert reached["reason"] == "ThresholdCrossed"
    assert "25%" in reached["message"]
    events = wait_for(
        lambda: [
            event
            for event in admin.get(f"/api/v1/namespaces/{tenant}/events")["items"]
            if event["reason"] == "ThresholdCrossed"
        ],
        "a ThresholdCrossed Event",
    )
    assert events[0]["involvedObject"]["kind"] == "CreditBudget"


def test_a_dead_replicas_lease_is_charged_not_lost(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer
) -> None:
    create_budget(cluster, tenant, 100_000)
    run = create_run(cluster, tenant)
    short = {"SMARTSPEC_GATEWAY_LEASE_SECONDS": "2"}
    doomed, survivor = start_gateway(**short), start_gateway(**short)
    admin = cluster.rest("admin")

    stub.delay_seconds = 5.0  # the doomed replica dies with this call in flight

    def doomed_call() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the replica dies under it
            chat(doomed, token_for(run))

    caller = threading.Thread(target=doomed_call, daemon=True)
    caller.start()
    lease = wait_for(
        lambda: [
            r for r in budget_status(admin, tenant).get("reservations", []) if r["holder"] == "gw-0"
        ],
        "the doomed replica's lease",
    )[0]
    wait_for(lambda: len(stub.requests) == 1, "the call to reach the provider")
    assert doomed.stop(signal.SIGKILL) != 0
    stub.delay_seconds = 0.0
    time.sleep(2.5)  # past the lease's lifetime

    status, _, _ = chat(survivor, token_for(run))
    assert status == 200
    final = settled(admin, tenant)
    assert all(r["holder"] != "gw-0" for r in final.get("reservations", []))
    assert final["spentCredits"] >= lease["credits"], "the lapsed lease was charged"
    assert "ledger OK" in verify_ledger(cluster, tenant, survivor)


def test_local_model_calls_go_to_the_attempts_sidecar_and_are_charged(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer
) -> None:
    create_budget(cluster, tenant, 100_000)
    run = create_run(cluster, tenant, generator={"backend": "llm", "model": "local-llama"})
    gateway = start_gateway()
    admin = cluster.rest("admin")
    token = token_for(run)

    status, body, _ = chat(gateway, token, model="local-llama")
    assert (status, body["error"]["code"]) == (503, "local_model_not_ready")
    assert stub.requests == []

    # The operator records the attempt's sidecar; the stub stands in for that model server.
    admin.patch(
        f"{API}/{tenant}/generationruns/run-1/status",
        {"status": {"attempts": [{"number": 1, "modelEndpoint": f"{stub.url}/v1"}]}},
    )
    time.sleep(1.2)  # the gateway reuses a run read for up to a second
    status, body, _ = chat(gateway, token, model="local-llama")
    assert status == 200, body
    assert [request["model"] for request in stub.requests] == ["local-llama"]
    local_price = ModelPrice("local-llama", 10_000, 10_000)
    assert settled(admin, tenant)["spentCredits"] == charge(body, local_price)
    assert "ledger OK" in verify_ledger(cluster, tenant, gateway)
