"""Streamed chat completions in the gateway: the request's stream fields, the answer the
chunks assemble into, what the client is sent, and how a relay ends (specs/CORE-003,
"Streaming"). The relay runs in a real aiohttp server with a canned upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from smartspec.gateway.chat_request import validate_chat_request
from smartspec.gateway.errors import GatewayError
from smartspec.gateway.router import ChunkStream, UpstreamError
from smartspec.gateway.streaming import (
    DONE,
    SSE_HEADERS,
    ChatEncoder,
    StreamedAnswer,
    client_event,
    relay,
    replay_body,
)
from smartspec.logic.spending import Streamed, StreamEnd

SERVED = frozenset({"stub-model"})


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "served-by",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
USAGE_CHUNK = {**chunk({}), "choices": [], "usage": USAGE}
ANSWER = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "héllo"}),
    chunk({"content": " world"}),
    chunk({}, "stop"),
    USAGE_CHUNK,
]


# ------------------------------------------------------------------ the request


def test_stream_fields_are_read_and_the_upstream_is_always_asked_for_usage() -> None:
    body = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}]}
    plain = validate_chat_request({**body, "stream": True}, SERVED)
    assert (plain.stream, plain.include_usage) == (True, False)
    assert plain.upstream(64)["stream_options"] == {"include_usage": True}
    asked = validate_chat_request(
        {**body, "stream": True, "stream_options": {"include_usage": True}}, SERVED
    )
    assert (asked.stream, asked.include_usage) == (True, True)
    assert "stream_options" not in validate_chat_request(body, SERVED).upstream(64)


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"stream": "yes"}, "stream", "invalid_request"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_request"),
        ({"stream": True, "stream_options": []}, "stream_options", "invalid_request"),
        (
            {"stream": True, "stream_options": {"include_obfuscation": True}},
            "stream_options.include_obfuscation",
            "unsupported_parameter",
        ),
        (
            {"stream": True, "stream_options": {"include_usage": "yes"}},
            "stream_options.include_usage",
            "invalid_request",
        ),
    ],
)
def test_bad_stream_fields_are_refused(fields: dict[str, Any], param: str, code: str) -> None:
    body = {"model": "stub-model", "messages": [{"role": "user", "content": "hi"}], **fields}
    with pytest.raises(GatewayError) as raised:
        validate_chat_request(body, SERVED)
    assert (raised.value.status, raised.value.code, raised.value.extra["param"]) == (
        400,
        code,
        param,
    )


# ------------------------------------------------------------------ the answer


def test_chunks_assemble_into_the_answer_and_count_what_was_generated() -> None:
    answer = StreamedAnswer()
    for item in ANSWER:
        answer.add(item)
    assert answer.completion("stub-model") == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "stub-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "héllo world"},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
    assert answer.usage == (7, 3)
    assert answer.streamed == Streamed(
        generated_bytes=len("héllo world".encode()), generated_chunks=2
    )


def test_tool_call_fragments_merge_by_index() -> None:
    answer = StreamedAnswer()
    opening = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "write"}}
    for item in [
        chunk({"role": "assistant", "tool_calls": [opening]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"pa'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'th": 1}'}}]}),
        chunk({}, "tool_calls"),
    ]:
        answer.add(item)
    message = answer.completion("stub-model")["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "write", "arguments": '{"path": 1}'},
            }
        ],
    }
    assert answer.streamed == Streamed(len("write") + len('{"path": 1}'), 3)
    assert answer.usage is None, "no usage chunk arrived"


@pytest.mark.parametrize(
    "usage",
    [None, {}, {"prompt_tokens": 0, "completion_tokens": 0}, {"prompt_tokens": "7"}],
)
def test_missing_or_unusable_usage_is_not_taken_as_counts(usage: object) -> None:
    answer = StreamedAnswer()
    answer.add({**USAGE_CHUNK, "usage": usage})
    assert answer.usage is None


def test_the_client_gets_the_usage_chunk_only_when_it_asked() -> None:
    assert client_event(USAGE_CHUNK, "stub-model", include_usage=False) is None
    sent = client_event(USAGE_CHUNK, "stub-model", include_usage=True)
    assert sent is not None
    assert json.loads(sent.removeprefix(b"data: ")) == {**USAGE_CHUNK, "model": "stub-model"}
    with_null = {**chunk({"content": "x"}), "usage": None}
    event = client_event(with_null, "stub-model", include_usage=False)
    assert event is not None
    assert "usage" not in json.loads(event.removeprefix(b"data: "))


def test_a_recorded_answer_replays_as_a_stream() -> None:
    answer = StreamedAnswer()
    for item in ANSWER:
        answer.add(item)
    events = replay_body(answer.completion("stub-model"), include_usage=True).split(b"\n\n")
    assert events[-2:] == [DONE.strip(), b""]
    chunks = [json.loads(event.removeprefix(b"data: ")) for event in events[:-2]]
    replayed = StreamedAnswer()
    for item in chunks:
        replayed.add(item)
    assert replayed.completion("stub-model") == answer.completion("stub-model")
    without = replay_body(answer.completion("stub-model"), include_usage=False)
    assert b'"usage"' not in without


# ------------------------------------------------------------------ the relay


class CannedUpstream:
    """An upstream that yields `chunks`, then fails, ends, or waits for ever."""

    def __init__(self, chunks: list[dict[str, Any]], then: str = "end") -> None:
        self.items = chunks
        self.then = then
        self.cancelled = asyncio.Event()

    def stream(self) -> ChunkStream:
        async def close() -> None:
            return None

        return ChunkStream(self._chunks(), close)

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        for item in self.items:
            yield item
        if self.then == "fail":
            raise UpstreamError("stream_broken", 502, "connection reset by the provider")
        if self.then == "wait":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise


Relayed = tuple[StreamEnd, StreamedAnswer, list[bytes]]


async def relayed(
    upstream: CannedUpstream,
    *,
    include_usage: bool = False,
    read: Callable[[aiohttp.ClientResponse], Awaitable[list[bytes]]] | None = None,
) -> Relayed:
    """Serve one streamed answer from `upstream` and read it as a client."""
    ended: asyncio.Future[tuple[StreamEnd, StreamedAnswer]] = asyncio.Future()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers=SSE_HEADERS)
        answer = StreamedAnswer()
        end = await relay(
            request, response, upstream.stream(), answer, ChatEncoder("stub-model", include_usage)
        )
        ended.set_result((end, answer))
        return response

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{port}/") as response,
        ):
            assert response.headers["Content-Type"] == "text/event-stream"
            events = await (read or _all_events)(response)
        end, answer = await asyncio.wait_for(ended, 30)
    finally:
        await runner.cleanup()
    return end, answer, events


async def _all_events(response: aiohttp.ClientResponse) -> list[bytes]:
    return [line.strip() async for line in response.content if line.strip()]


async def test_a_finished_stream_ends_with_done_and_keeps_usage_from_the_client() -> None:
    end, answer, events = await relayed(CannedUpstream(ANSWER))
    assert end is StreamEnd.FINISHED
    assert events[-1] == b"data: [DONE]"
    sent = [json.loads(event.removeprefix(b"data: ")) for event in events[:-1]]
    assert len(sent) == 4, "the usage chunk is not sent to a client that did not ask"
    assert {item["model"] for item in sent} == {"stub-model"}
    assert answer.usage == (7, 3)


async def test_a_client_that_asked_gets_the_usage_chunk() -> None:
    _, _, events = await relayed(CannedUpstream(ANSWER), include_usage=True)
    assert json.loads(events[-2].removeprefix(b"data: "))["usage"] == USAGE


@pytest.mark.parametrize("then", ["fail", "end"])
async def test_a_broken_upstream_ends_the_stream_with_an_error_event(then: str) -> None:
    end, answer, events = await relayed(CannedUpstream(ANSWER[:2], then=then))
    assert end is StreamEnd.UPSTREAM_BROKE
    last = json.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "stream_broken"
    assert b"data: [DONE]" not in events
    assert answer.streamed == Streamed(len("héllo".encode()), 1)


async def test_a_client_that_leaves_cancels_a_stream_waiting_on_its_upstream() -> None:
    upstream = CannedUpstream(ANSWER[:2], then="wait")

    async def two_then_leave(response: aiohttp.ClientResponse) -> list[bytes]:
        events = []
        async for line in response.content:
            if line.strip():
                events.append(line.strip())
            if len(events) == 2:
                response.close()
                break
        return events

    end, answer, events = await relayed(upstream, read=two_then_leave)
    assert end is StreamEnd.CLIENT_GONE
    assert upstream.cancelled.is_set(), "the wait for the upstream was cancelled"
    assert len(events) == 2
    assert answer.streamed.generated_chunks == 1
