"""Streamed chat completions through the gateway, against the real API server, real HTTP S3
and the local OpenAI-compatible stub (canned answers), with the official `openai` client.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Streaming": a stream is reserved
like any call, settled exactly by the usage it carried, else by a conservative count of
what it delivered (it ended without usage, broke upstream, or its client left, which
cancels the upstream request), and the ledger says which.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from smartspec.gateway.chat_request import prompt_token_bound
from smartspec.logic.pricing import cost_credits
from smartspec.logic.spending import SettledBy
from stubs.openai_stub import StubServer, default_reply
from testcluster.gateway_calls import (
    STUB_PRICE,
    chat,
    create_budget,
    create_run,
    gateway_on,
    settle_entries,
    settled,
    token_for,
    verify_ledger,
)
from testcluster.harness import GatewayProcess, wait_for, write_gateway_config
from testcluster.plugin import Cluster
from testcluster.s3 import S3Endpoint

pytestmark = pytest.mark.integration

StartGateway = Callable[..., GatewayProcess]
PROMPT = "Write a to-do API."
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]
MAX_TOKENS = 64
TRANSPORTS = ["litellm", "openai-compatible"]


def client(gateway: GatewayProcess, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0)


def stream(
    gateway: GatewayProcess, token: str, **options: Any
) -> openai.Stream[ChatCompletionChunk]:
    chunks: openai.Stream[ChatCompletionChunk] = client(gateway, token).chat.completions.create(
        model="stub-model", messages=MESSAGES, stream=True, **{"max_tokens": MAX_TOKENS, **options}
    )
    return chunks


def content_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def reserved_prompt_bound() -> int:
    """The prompt's token bound the gateway reserves (and charges when no usage arrives)."""
    return prompt_token_bound({"messages": MESSAGES})


def estimate(generated_bytes: int, chunks: int) -> int:
    """The conservative charge of CORE-003 for a stream that delivered this much."""
    completion = min(MAX_TOKENS, max(generated_bytes, chunks))
    return cost_credits(STUB_PRICE, reserved_prompt_bound(), completion)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stream_is_charged_exactly_what_its_usage_prices_to(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    s3: S3Endpoint,
    s3_client: Any,
    tmp_path: Path,
    transport: str,
) -> None:
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    gateway = gateway_on(transport, start_gateway, stub.url, tmp_path)
    token = token_for(run)
    reply = default_reply({"messages": MESSAGES})

    with_usage = list(stream(gateway, token, stream_options={"include_usage": True}))
    assert content_of(with_usage) == reply
    assert with_usage[-1].choices == []
    usage = with_usage[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(PROMPT) // 4, len(reply) // 4)
    assert {chunk.model for chunk in with_usage} == {"stub-model"}
    first = cost_credits(STUB_PRICE, usage.prompt_tokens, usage.completion_tokens)

    without = list(stream(gateway, token))
    assert content_of(without) == reply
    assert all(chunk.usage is None and chunk.choices for chunk in without), "no usage chunk"
    assert stub.requests[-1]["stream_options"] == {"include_usage": True}, "always asked"

    admin = cluster.rest("admin")
    assert settled(admin, tenant)["spentCredits"] == 2 * first
    entries = settle_entries(s3, cluster, tenant)
    assert [(e.credits, e.settled_by) for e in entries] == [(first, SettledBy.USAGE)] * 2
    assert "ledger OK" in verify_ledger(cluster, tenant, gateway)

    # The assembled answer is recorded like a non-streamed one, content-addressed.
    listed = s3_client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{tenant}/transcripts/")
    assert listed.get("KeyCount") == 1, "the same request twice: one transcript"
    stored = s3_client.get_object(Bucket=s3.bucket, Key=listed["Contents"][0]["Key"])
    answer = json.loads(json.loads(stored["Body"].read())["responseBody"])
    assert answer["choices"][0]["message"]["content"] == reply
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] == usage.completion_tokens


@pytest.mark.parametrize(("primary", "backup"), [TRANSPORTS, TRANSPORTS[::-1]])
def test_a_stream_falls_back_across_transports_and_is_charged_once(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    s3: S3Endpoint,
    tmp_path: Path,
    primary: str,
    backup: str,
) -> None:
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    config = write_gateway_config(
        tmp_path / "mixed.yaml", stub.url, transport=primary, backup_transport=backup
    )
    gateway = start_gateway(SMARTSPEC_GATEWAY_CONFIG=str(config))
    stub.fail_models["stub-model"] = 500

    chunks = list(stream(gateway, token_for(run), stream_options={"include_usage": True}))
    assert [r["model"] for r in stub.requests] == ["stub-model", "stub-model", "stub-backup"]
    assert content_of(chunks) == default_reply({"messages": MESSAGES})
    usage = chunks[-1].usage
    assert usage is not None
    charged = cost_credits(STUB_PRICE, usage.prompt_tokens, usage.completion_tokens)
    assert settled(cluster.rest("admin"), tenant)["spentCredits"] == charged, "as asked for"
    (entry,) = settle_entries(s3, cluster, tenant)
    assert entry.settled_by is SettledBy.USAGE


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stream_without_usage_is_charged_a_conservative_count(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    s3: S3Endpoint,
    tmp_path: Path,
    transport: str,
) -> None:
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    gateway = gateway_on(transport, start_gateway, stub.url, tmp_path)
    reply = default_reply({"messages": MESSAGES})

    stub.script.append("no-usage")
    chunks = list(stream(gateway, token_for(run), stream_options={"include_usage": True}))
    assert content_of(chunks) == reply
    assert all(chunk.usage is None for chunk in chunks), "no usage was made up"

    content_chunks = -(-len(reply) // stub.chunk_chars)
    expected = estimate(len(reply.encode()), content_chunks)
    assert expected > 0
    assert settled(cluster.rest("admin"), tenant)["spentCredits"] == expected
    (entry,) = settle_entries(s3, cluster, tenant)
    assert (entry.credits, entry.settled_by) == (expected, SettledBy.ESTIMATE_NO_USAGE)
    assert (entry.prompt_tokens, entry.completion_tokens) == (
        reserved_prompt_bound(),
        min(MAX_TOKENS, len(reply.encode())),
    )
    assert gateway.metric("smartspec_unreported_usage_total", model="stub-model") == 1
    assert "ledger OK" in verify_ledger(cluster, tenant, gateway)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stream_cut_upstream_breaks_the_client_and_is_charged_what_arrived(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    s3: S3Endpoint,
    tmp_path: Path,
    transport: str,
) -> None:
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    gateway = gateway_on(transport, start_gateway, stub.url, tmp_path)
    stub.script.append("stream-cut")
    stub.cut_after_chunks = 3  # the role, then two chunks of four characters

    received: list[ChatCompletionChunk] = []
    chunks = stream(gateway, token_for(run), stream_options={"include_usage": True})
    with pytest.raises(openai.APIError, match="stream broke"):
        received.extend(chunks)
    assert content_of(received) == default_reply({"messages": MESSAGES})[:8]
    assert len(stub.requests) == 1, "a stream that delivered content is not retried"
    assert [(r.chunks_sent, r.ended) for r in stub.streams] == [(3, "cut")]

    expected = estimate(8, 2)
    budget = settled(cluster.rest("admin"), tenant)
    assert (budget["spentCredits"], budget.get("reservedCredits", 0)) == (expected, 0)
    (entry,) = settle_entries(s3, cluster, tenant)
    assert (entry.credits, entry.settled_by) == (expected, SettledBy.ESTIMATE_UPSTREAM_BROKE)
    assert entry.completion_tokens == 8
    assert (
        gateway.metric("smartspec_upstream_errors_total", model="stub-model", error="stream_broken")
        == 1
    )
    assert "ledger OK" in verify_ledger(cluster, tenant, gateway)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_that_leaves_mid_stream_cancels_the_upstream_call(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    s3: S3Endpoint,
    tmp_path: Path,
    transport: str,
) -> None:
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    gateway = gateway_on(transport, start_gateway, stub.url, tmp_path)
    stub.reply_fn = lambda body: "abcd" * 60  # 60 chunks
    stub.chunk_delay_seconds = 0.2  # 12 s for the whole answer

    chunks = stream(gateway, token_for(run), max_tokens=256)
    read = 0
    for chunk in chunks:
        read += bool(chunk.choices and chunk.choices[0].delta.content)
        if read == 3:
            break
    chunks.close()

    record = stub.streams[0]
    wait_for(lambda: record.ended != "streaming", "the stub to see the request end")
    assert record.ended == "client-gone", "the gateway closed the upstream request"
    assert record.chunks_sent < 61

    budget = settled(cluster.rest("admin"), tenant)
    assert budget.get("reservedCredits", 0) == 0, "nothing is left reserved"
    (entry,) = settle_entries(s3, cluster, tenant)
    assert entry.settled_by is SettledBy.ESTIMATE_CLIENT_GONE
    # Counted from what reached the gateway: at least what the client read, at most what
    # the stub sent (four characters a chunk, after the role chunk).
    assert 4 * read <= entry.completion_tokens <= 4 * (record.chunks_sent - 1)
    assert budget["spentCredits"] == entry.credits > 0
    assert "ledger OK" in verify_ledger(cluster, tenant, gateway)


def test_a_budget_too_small_refuses_a_stream_as_it_refuses_a_call(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer
) -> None:
    create_budget(cluster, tenant, 10)
    run = create_run(cluster, tenant)
    gateway = start_gateway()
    status, body, _ = chat(gateway, token_for(run), content=PROMPT, max_tokens=MAX_TOKENS)
    assert status == 402

    with pytest.raises(openai.APIStatusError) as raised:
        stream(gateway, token_for(run))
    assert raised.value.status_code == 402
    streamed_error = raised.value.body
    assert isinstance(streamed_error, dict)
    assert {key: streamed_error[key] for key in ("code", "constraint", "type")} == {
        key: body["error"][key] for key in ("code", "constraint", "type")
    }
    assert streamed_error["code"] == "budget_exhausted"
    assert stub.requests == [], "refused before any provider was contacted"


def test_a_streamed_call_replays_as_a_stream_at_no_cost(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer
) -> None:
    create_budget(cluster, tenant, 1_000_000)
    live = create_run(cluster, tenant, "live")
    gateway = start_gateway()
    recorded = list(stream(gateway, token_for(live), stream_options={"include_usage": True}))
    admin = cluster.rest("admin")
    spent = settled(admin, tenant)["spentCredits"]

    replay = create_run(cluster, tenant, "replay", replayOf={"name": "live"})
    token = token_for(replay, replay_of="live")

    def replayed() -> list[ChatCompletionChunk] | None:
        try:
            return list(stream(gateway, token, stream_options={"include_usage": True}))
        except openai.NotFoundError:
            return None  # the transcript is stored just after the answer

    chunks = wait_for(replayed, "the streamed call's transcript")
    assert content_of(chunks) == content_of(recorded)
    assert chunks[-1].usage == recorded[-1].usage
    assert len(stub.requests) == 1, "a replay never calls the provider"
    assert settled(admin, tenant)["spentCredits"] == spent
