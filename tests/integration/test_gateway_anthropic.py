"""Anthropic's Messages API through the gateway, with the official `anthropic` client, against
the real API server, real HTTP S3 and the local OpenAI-compatible stub.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Anthropic Messages": the same run
token (as `x-api-key` or a bearer token), the same reservation, refusals, settlement, ledger
and transcripts as a chat completion, the request translated to the route's chat request and
the answer back into a Message or Anthropic's stream events. The stub's answers are canned:
these tests prove the gateway's plumbing, never model quality.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import Message, MessageParam, ToolParam

from smartspec.gateway.anthropic_translation import chat_body
from smartspec.gateway.chat_request import prompt_token_bound
from smartspec.logic.pricing import cost_credits
from smartspec.logic.spending import SettledBy
from stubs.anthropic_format import text_of
from stubs.openai_stub import StubServer, default_reply
from testcluster.gateway_calls import (
    STUB_PRICE,
    create_budget,
    create_run,
    gateway_on,
    settle_entries,
    settled,
    token_for,
    verify_ledger,
)
from testcluster.harness import GatewayProcess, wait_for
from testcluster.plugin import Cluster
from testcluster.s3 import S3Endpoint

pytestmark = pytest.mark.integration

StartGateway = Callable[..., GatewayProcess]
PROMPT = "Write a to-do API."
MESSAGES: list[MessageParam] = [{"role": "user", "content": PROMPT}]
MAX_TOKENS = 64
TRANSPORTS = ["litellm", "openai-compatible"]
TOOL: ToolParam = {
    "name": "run_tests",
    "description": "Run the project's tests",
    "input_schema": {"type": "object", "properties": {"reason": {"type": "string"}}},
}


def client(gateway: GatewayProcess, token: str, *, bearer: bool = False) -> anthropic.Anthropic:
    """The SDK as Anthropic's agents use it: the token as api_key (x-api-key), or as a
    bearer token (auth_token)."""
    if bearer:
        return anthropic.Anthropic(base_url=gateway.url, max_retries=0, auth_token=token)
    return anthropic.Anthropic(base_url=gateway.url, max_retries=0, api_key=token)


def create(gateway: GatewayProcess, token: str, **options: Any) -> Message:
    message: Message = client(gateway, token).messages.create(
        model="stub-model", **{"max_tokens": MAX_TOKENS, "messages": MESSAGES, **options}
    )
    return message


def streamed(gateway: GatewayProcess, token: str, **options: Any) -> tuple[str, Message]:
    """The text as the SDK's stream yields it, and the Message it accumulates."""
    with client(gateway, token).messages.stream(
        model="stub-model", **{"max_tokens": MAX_TOKENS, "messages": MESSAGES, **options}
    ) as stream:
        text = "".join(stream.text_stream)
        return text, stream.get_final_message()


def post(gateway: GatewayProcess, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/messages", json=body, headers=headers, timeout=60)


def reply(system: str | None = None) -> str:
    """The stub's canned answer (it counts the chat messages the request became)."""
    chat = chat_body(
        {"model": "stub-model", "max_tokens": 1, "messages": MESSAGES, "system": system}
    )
    return default_reply(chat)


def stub_usage(text: str) -> tuple[int, int]:
    """What the stub reports: characters // 4 of the prompt and of the answer."""
    return len(PROMPT) // 4, max(1, len(text) // 4)


def dumped(message: Message) -> dict[str, Any]:
    """A Message as JSON without its unset fields: the SDK's accumulated stream is a
    ParsedMessage, with parsed_output fields a plain Message has not."""
    return message.model_dump(exclude_none=True)


def estimate(generated_bytes: int, chunks: int) -> int:
    """The conservative charge of CORE-003 for a stream that delivered this much."""
    bound = prompt_token_bound(
        chat_body({"model": "stub-model", "max_tokens": MAX_TOKENS, "messages": MESSAGES})
    )
    return cost_credits(STUB_PRICE, bound, min(MAX_TOKENS, max(generated_bytes, chunks)))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_message_is_charged_exactly_what_the_upstream_reports(
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

    message = create(gateway, token, system="Be terse.", temperature=0.5, top_k=5)
    assert [(block.type, getattr(block, "text", None)) for block in message.content] == [
        ("text", reply("Be terse."))
    ]
    assert (message.role, message.model, message.stop_reason) == (
        "assistant",
        "stub-model",
        "end_turn",
    )
    assert message.id.startswith("msg_")
    usage = (message.usage.input_tokens, message.usage.output_tokens)
    sent = stub.requests[-1]
    assert usage == ((len("Be terse.") + len(PROMPT)) // 4, len(reply("Be terse.")) // 4)
    assert sent["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": PROMPT},
    ]
    assert (sent["max_tokens"], sent["temperature"], sent["top_k"]) == (MAX_TOKENS, 0.5, 5)

    streamed_text, final = streamed(gateway, token, max_tokens=32)  # x-api-key, streamed
    bearer = client(gateway, token, bearer=True).messages.create(
        model="stub-model", max_tokens=16, messages=MESSAGES
    )
    assert streamed_text == reply()
    assert [block.model_dump(exclude_none=True) for block in bearer.content] == [
        {"type": "text", "text": reply()}
    ]
    assert final.usage.output_tokens == len(reply()) // 4

    charges = [
        cost_credits(STUB_PRICE, *usage),
        cost_credits(STUB_PRICE, *stub_usage(reply())),
        cost_credits(STUB_PRICE, *stub_usage(reply())),
    ]
    assert settled(cluster.rest("admin"), tenant)["spentCredits"] == sum(charges)
    entries = settle_entries(s3, cluster, tenant)
    assert sorted(e.credits for e in entries) == sorted(charges)
    assert {e.settled_by for e in entries} == {SettledBy.USAGE}
    assert "ledger OK" in verify_ledger(cluster, tenant, gateway)

    # Recorded like a chat completion, keyed by the Messages request itself.
    listed = s3_client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{tenant}/transcripts/")
    assert listed.get("KeyCount") == 3
    documents = [
        json.loads(s3_client.get_object(Bucket=s3.bucket, Key=item["Key"])["Body"].read())
        for item in listed["Contents"]
    ]
    assert {document["request"]["api"] for document in documents} == {"anthropic.messages"}
    first = next(d for d in documents if d["request"].get("system") == "Be terse.")
    assert Message.model_validate_json(first["responseBody"]) == message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_tool_call_round_trips_through_the_translation(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    tmp_path: Path,
    transport: str,
) -> None:
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    gateway = gateway_on(transport, start_gateway, stub.url, tmp_path)
    token = token_for(run)

    called = create(gateway, token, tools=[TOOL], tool_choice={"type": "auto"})
    assert called.stop_reason == "tool_use"
    (use,) = [block for block in called.content if block.type == "tool_use"]
    assert (use.name, use.input, use.id) == ("run_tests", {"reason": "stub"}, "call_stub_1")
    assert stub.requests[-1]["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "run_tests",
                "parameters": TOOL["input_schema"],
                "description": TOOL["description"],
            },
        }
    ]
    _, streamed_call = streamed(gateway, token, tools=[TOOL])
    assert streamed_call.stop_reason == "tool_use"
    assert dumped(streamed_call)["content"] == [use.model_dump(exclude_none=True)]

    conversation: list[MessageParam] = [
        *MESSAGES,
        {"role": "assistant", "content": [use.model_dump()]},  # type: ignore[list-item]
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "2 passed"}],
        },
    ]
    answered = create(gateway, token, tools=[TOOL], messages=conversation)
    assert answered.stop_reason == "end_turn"
    sent = [
        {key: value for key, value in message.items() if value is not None}  # litellm drops nulls
        for message in stub.requests[-1]["messages"][1:]
    ]
    assert sent == [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_stub_1",
                    "type": "function",
                    "function": {"name": "run_tests", "arguments": '{"reason":"stub"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_stub_1", "content": "2 passed"},
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stop_sequences_and_max_tokens_end_a_message_as_anthropic_says(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    tmp_path: Path,
    transport: str,
) -> None:
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    gateway = gateway_on(transport, start_gateway, stub.url, tmp_path)
    token = token_for(run)
    stub.reply_fn = lambda body: "first part. STOP second part"

    stopped = create(gateway, token, stop_sequences=["STOP"])
    assert stub.requests[-1]["stop"] == ["STOP"]
    assert [block.text for block in stopped.content] == ["first part. "]  # type: ignore[union-attr]
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "STOP")

    text, final = streamed(gateway, token, stop_sequences=["STOP"])
    assert text == "first part. "
    if transport == "openai-compatible":
        assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "STOP")
    else:  # litellm's stream chunks do not carry which stop string ended the answer
        assert (final.stop_reason, final.stop_sequence) == ("end_turn", None)

    cut = create(gateway, token, max_tokens=2)
    assert (cut.stop_reason, cut.usage.output_tokens) == ("max_tokens", 2)


def test_refusals_come_in_anthropics_shape_before_any_provider_call(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer
) -> None:
    create_budget(cluster, tenant, 10)
    run = create_run(cluster, tenant)
    gateway = start_gateway()
    token = token_for(run)

    with pytest.raises(anthropic.APIStatusError) as raised:
        create(gateway, token)
    assert raised.value.status_code == 402
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert {key: body["error"][key] for key in ("type", "code", "constraint")} == {
        "type": "billing_error",
        "code": "budget_exhausted",
        "constraint": "budget_remaining",
    }
    assert body["error"]["remaining_credits"] < body["error"]["required_credits"]
    with pytest.raises(anthropic.APIStatusError) as streamed_refusal:
        streamed(gateway, token)
    assert streamed_refusal.value.status_code == 402

    with pytest.raises(anthropic.AuthenticationError) as unauthenticated:
        create(gateway, token + "x")
    assert unauthenticated.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    response = post(gateway, {"model": "stub-model", "max_tokens": 8, "messages": MESSAGES})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_token"
    with pytest.raises(anthropic.NotFoundError):
        client(gateway, token).messages.create(
            model="no-such-model", max_tokens=8, messages=MESSAGES
        )
    assert stub.requests == [], "refused before any provider was contacted"


def test_a_model_the_budget_denies_is_a_permission_error(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer
) -> None:
    create_budget(cluster, tenant, 1_000_000, models={"allow": ["*"], "deny": ["stub-*"]})
    run = create_run(cluster, tenant)
    gateway = start_gateway()
    with pytest.raises(anthropic.PermissionDeniedError) as raised:
        create(gateway, token_for(run))
    error = raised.value.body["error"]  # type: ignore[index]
    assert (error["type"], error["code"]) == ("permission_error", "model_not_allowed")
    assert stub.requests == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "stub-model", "messages": MESSAGES}, "max_tokens"),
        ({"model": "stub-model", "max_tokens": 8, "messages": []}, "messages"),
        (
            {"model": "stub-model", "max_tokens": 8, "messages": MESSAGES, "thinking": {}},
            "thinking",
        ),
        (
            {"model": "stub-model", "max_tokens": "8", "messages": MESSAGES},
            "max_tokens",
        ),
        (
            {
                "model": "stub-model",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}],
            },
            "messages[0].content[0].type",
        ),
    ],
)
def test_a_bad_request_is_a_400_naming_the_field_and_costs_nothing(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    body: dict[str, Any],
    param: str,
) -> None:
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    gateway = start_gateway()
    response = post(
        gateway, body, **{"x-api-key": token_for(run), "anthropic-version": "2023-06-01"}
    )
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == param
    assert param in error["error"]["message"]
    assert stub.requests == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stream_cut_upstream_raises_in_the_sdk_and_is_charged_what_arrived(
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

    received: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError, match="stream broke") as raised,
        client(gateway, token_for(run)).messages.stream(
            model="stub-model", max_tokens=MAX_TOKENS, messages=MESSAGES
        ) as stream,
    ):
        received.extend(stream.text_stream)
    assert raised.value.body["error"]["code"] == "stream_broken"  # type: ignore[index]
    assert "".join(received) == reply()[:8]
    assert [(r.chunks_sent, r.ended) for r in stub.streams] == [(3, "cut")]

    expected = estimate(8, 2)
    budget = settled(cluster.rest("admin"), tenant)
    assert (budget["spentCredits"], budget.get("reservedCredits", 0)) == (expected, 0)
    (entry,) = settle_entries(s3, cluster, tenant)
    assert (entry.credits, entry.settled_by) == (expected, SettledBy.ESTIMATE_UPSTREAM_BROKE)
    assert expected > 0
    assert "ledger OK" in verify_ledger(cluster, tenant, gateway)


def test_a_client_that_leaves_mid_stream_cancels_the_upstream_call(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer, s3: S3Endpoint
) -> None:
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    gateway = start_gateway()
    stub.reply_fn = lambda body: "abcd" * 60  # 60 chunks
    stub.chunk_delay_seconds = 0.2  # 12 s for the whole answer

    with client(gateway, token_for(run)).messages.stream(
        model="stub-model", max_tokens=256, messages=MESSAGES
    ) as stream:
        for read, _ in enumerate(stream.text_stream, start=1):
            if read == 3:
                break

    record = stub.streams[0]
    wait_for(lambda: record.ended != "streaming", "the stub to see the request end")
    assert record.ended == "client-gone", "the gateway closed the upstream request"
    budget = settled(cluster.rest("admin"), tenant)
    assert budget.get("reservedCredits", 0) == 0
    (entry,) = settle_entries(s3, cluster, tenant)
    assert entry.settled_by is SettledBy.ESTIMATE_CLIENT_GONE
    assert budget["spentCredits"] == entry.credits > 0


def test_a_message_replays_the_same_answer_at_no_cost(
    cluster: Cluster, tenant: str, start_gateway: StartGateway, stub: StubServer
) -> None:
    create_budget(cluster, tenant, 1_000_000)
    live = create_run(cluster, tenant, "live")
    gateway = start_gateway()
    recorded = create(gateway, token_for(live), tools=[TOOL])
    _, recorded_stream = streamed(gateway, token_for(live))
    admin = cluster.rest("admin")
    spent = settled(admin, tenant)["spentCredits"]
    calls = len(stub.requests)

    replay = create_run(cluster, tenant, "replay", replayOf={"name": "live"})
    token = token_for(replay, replay_of="live")

    def replayed() -> Message | None:
        try:
            return create(gateway, token, tools=[TOOL])
        except anthropic.NotFoundError:
            return None  # the transcript is stored just after the answer

    assert wait_for(replayed, "the message's transcript") == recorded, "the same Message"
    _, again = wait_for(lambda: _streamed_or_none(gateway, token), "the stream's transcript")
    assert dumped(again) == dumped(recorded_stream), "a streamed call replays as the same"
    _, as_stream = streamed(gateway, token, tools=[TOOL])
    assert dumped(as_stream) == dumped(recorded), "a message recorded whole replays as a stream"

    # A chat completion asking the same is not answered from a Messages transcript.
    chat = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        chat.chat.completions.create(model="stub-model", messages=MESSAGES, max_tokens=MAX_TOKENS)  # type: ignore[arg-type]
    assert len(stub.requests) == calls, "a replay never calls the provider"
    assert settled(admin, tenant)["spentCredits"] == spent


def _streamed_or_none(gateway: GatewayProcess, token: str) -> tuple[str, Message] | None:
    try:
        return streamed(gateway, token)
    except anthropic.NotFoundError:
        return None


def test_the_responses_api_is_not_served_and_says_what_to_use(
    start_gateway: StartGateway, stub: StubServer
) -> None:
    gateway = start_gateway()
    responses = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as raised:
        responses.responses.create(model="stub-model", input="hi")
    error = raised.value.body
    assert isinstance(error, dict)
    assert error["code"] == "endpoint_not_served"
    assert "/v1/chat/completions" in error["message"]
    assert "/v1/messages" in error["message"]
    assert httpx.get(f"{gateway.url}/v1/responses/resp_1", timeout=10).status_code == 404
    assert stub.requests == []


def test_a_route_on_anthropics_api_is_called_through_litellms_anthropic_provider(
    cluster: Cluster,
    tenant: str,
    start_gateway: StartGateway,
    stub: StubServer,
    s3: S3Endpoint,
    tmp_path: Path,
) -> None:
    """A Messages request for a route whose provider is Anthropic's API goes through the same
    chat request and litellm's Anthropic provider (to the stub's Anthropic-format endpoint),
    and is charged exactly the usage that API reported."""
    create_budget(cluster, tenant, 1_000_000)
    run = create_run(cluster, tenant)
    route = {
        "name": "claude-stub",
        "litellmModel": "anthropic/claude-stub",
        "apiBase": stub.url,
        "apiKeyEnv": "STUB_ANTHROPIC_KEY",
        "price": {"inputCreditsPerMtok": 150_000, "outputCreditsPerMtok": 600_000},
    }
    config = tmp_path / "anthropic.yaml"
    config.write_text(json.dumps({"creditsPerUsd": 1_000_000, "numRetries": 0, "models": [route]}))
    gateway = start_gateway(SMARTSPEC_GATEWAY_CONFIG=str(config), STUB_ANTHROPIC_KEY="unused")
    messages = client(gateway, token_for(run)).messages

    message = messages.create(
        model="claude-stub", max_tokens=MAX_TOKENS, system="Be terse.", messages=MESSAGES
    )
    sent = stub.messages_requests[-1]
    assert (sent["model"], sent["max_tokens"]) == ("claude-stub", MAX_TOKENS)
    assert text_of(sent["system"]) == "Be terse."
    assert [text_of(m["content"]) for m in sent["messages"]] == [PROMPT]
    expected = default_reply({"messages": sent["messages"]})
    assert [block.model_dump(exclude_none=True) for block in message.content] == [
        {"type": "text", "text": expected}
    ]
    usage = (message.usage.input_tokens, message.usage.output_tokens)
    assert usage == ((len("Be terse.") + len(PROMPT)) // 4, len(expected) // 4), "the stub's"

    with messages.stream(model="claude-stub", max_tokens=MAX_TOKENS, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == expected
        final = stream.get_final_message()
    streamed_usage = (final.usage.input_tokens, final.usage.output_tokens)
    assert streamed_usage == (len(PROMPT) // 4, len(expected) // 4)

    charges = [cost_credits(STUB_PRICE, *usage), cost_credits(STUB_PRICE, *streamed_usage)]
    assert settled(cluster.rest("admin"), tenant)["spentCredits"] == sum(charges)
    entries = settle_entries(s3, cluster, tenant)
    assert sorted((e.credits, e.settled_by) for e in entries) == sorted(
        (charge, SettledBy.USAGE) for charge in charges
    )
    assert stub.requests == [], "nothing went to the OpenAI-compatible endpoint"
