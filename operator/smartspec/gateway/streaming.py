"""Streamed answers: relay an upstream's chunks to the client as server-sent events,
assemble the answer they make, and tell how the stream ended.

Contract: specs/CORE-003-gateway-and-budgets.md, sections "Streaming" and "Anthropic
Messages".

The upstream always streams Chat Completions chunks; a `StreamEncoder` writes them in the
client's API. A chat client (`ChatEncoder`) gets the OpenAI wire format:
`data: <chat.completion.chunk>` events and `data: [DONE]`, or an error event
(`data: {"error": ...}`, no `[DONE]`) when the upstream breaks mid-stream. The upstream is
always asked for usage; the client gets the usage chunk only when its
`stream_options.include_usage` asked for it. What the chunks deliver is counted as they pass
(`StreamedAnswer`), whichever the encoder, so that the call is settled the same way however
the stream ends.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from smartspec.gateway.router import ChunkStream, UpstreamError, reported_usage
from smartspec.logic.spending import Streamed, StreamEnd

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # a proxy in front must not hold chunks back
}
DONE = b"data: [DONE]\n\n"
CLIENT_CHECK_SECONDS = 0.25
"""How often a stream waiting on its upstream checks that its client is still there."""


def sse_event(data: dict[str, Any]) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return b"data: " + text.encode() + b"\n\n"


@dataclass
class StreamedAnswer:
    """The answer a stream's chunks make (choice 0: the gateway serves n = 1), and what
    they delivered, assembled as they pass."""

    id: str = ""
    created: int = 0
    system_fingerprint: str | None = None
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage_body: dict[str, Any] | None = None
    """The upstream's usage object, when it sent one."""
    generated_bytes: int = 0
    generated_chunks: int = 0

    @property
    def usage(self) -> tuple[int, int] | None:
        """(prompt, completion) tokens when the upstream reported usable counts."""
        return reported_usage(self.usage_body)

    @property
    def streamed(self) -> Streamed:
        return Streamed(self.generated_bytes, self.generated_chunks)

    def add(self, chunk: dict[str, Any]) -> None:
        self.id = self.id or str(chunk.get("id", ""))
        created = chunk.get("created")
        if not self.created and isinstance(created, int):
            self.created = created
        fingerprint = chunk.get("system_fingerprint")
        if isinstance(fingerprint, str):
            self.system_fingerprint = fingerprint
        if chunk.get("usage") is not None:
            self.usage_body = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        generated = self._text(self.content, delta.get("content"))
        # litellm and vLLM name streamed reasoning differently.
        generated += self._text(self.reasoning, delta.get("reasoning_content"))
        generated += self._text(self.reasoning, delta.get("reasoning"))
        for call in delta.get("tool_calls") or []:
            if isinstance(call, dict):
                generated += self._add_tool_call(call)
        if generated:
            self.generated_bytes += generated
            self.generated_chunks += 1
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])

    @staticmethod
    def _text(parts: list[str], text: object) -> int:
        if not isinstance(text, str) or not text:
            return 0
        parts.append(text)
        return len(text.encode())

    def _add_tool_call(self, call: dict[str, Any]) -> int:
        """Merge one tool-call fragment (by its index); the bytes of name and arguments."""
        entry = self.tool_calls.setdefault(
            int(call.get("index", 0)),
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if call.get("id"):
            entry["id"] = call["id"]
        function = call.get("function") or {}
        name, arguments = function.get("name") or "", function.get("arguments") or ""
        entry["function"]["name"] += name
        entry["function"]["arguments"] += arguments
        return len(name.encode()) + len(arguments.encode())

    def completion(self, model: str) -> dict[str, Any]:
        """The assembled answer as a `chat.completion` document (what a transcript keeps)."""
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self.content) if self.content or not self.tool_calls else None,
        }
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[index] for index in sorted(self.tool_calls)]
        document: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
        }
        if self.system_fingerprint is not None:
            document["system_fingerprint"] = self.system_fingerprint
        if self.usage_body is not None:
            document["usage"] = self.usage_body
        return document


def client_event(chunk: dict[str, Any], model: str, include_usage: bool) -> bytes | None:
    """The event the client gets for one upstream chunk (named as the model it asked for),
    or None: the usage chunk of a client that did not ask for it."""
    outgoing = {**chunk, "model": model}
    if "usage" in outgoing and not include_usage:
        if not outgoing.get("choices"):
            return None
        del outgoing["usage"]
    return sse_event(outgoing)


def error_event(error: UpstreamError) -> bytes:
    """The event that ends a broken stream; OpenAI clients raise it as an APIError."""
    return sse_event(
        {
            "error": {
                "message": f"the upstream stream broke ({error.kind}): {error.message}",
                "type": "upstream_error",
                "code": error.kind,
            }
        }
    )


class StreamEncoder(Protocol):
    """Writes a stream of Chat Completions chunks in the client's API."""

    def chunk(self, chunk: dict[str, Any], answer: StreamedAnswer) -> bytes:
        """The events for one upstream chunk (`answer` has already added it); b"" for none."""
        ...

    def finished(self, answer: StreamedAnswer) -> bytes:
        """The events that end a whole answer."""
        ...

    def broken(self, error: UpstreamError) -> bytes:
        """The event that ends a stream the upstream broke."""
        ...


@dataclass(frozen=True)
class ChatEncoder:
    """The OpenAI wire format: each chunk as the upstream sent it (named as the model the
    client asked for), `[DONE]`, or an error event."""

    model: str
    include_usage: bool

    def chunk(self, chunk: dict[str, Any], answer: StreamedAnswer) -> bytes:
        return client_event(chunk, self.model, self.include_usage) or b""

    def finished(self, answer: StreamedAnswer) -> bytes:
        return DONE

    def broken(self, error: UpstreamError) -> bytes:
        return error_event(error)


async def relay(
    request: web.Request,
    response: web.StreamResponse,
    upstream: ChunkStream,
    answer: StreamedAnswer,
    encoder: StreamEncoder,
) -> StreamEnd:
    """Send the upstream's chunks to the client until the stream ends, and say how it did.

    aiohttp does not cancel a handler whose client leaves; a write to it fails, but a stream
    waiting on its upstream writes nothing. So a watch checks the connection meanwhile and
    cancels the forwarding when it closes (the caller then closes the upstream).
    """
    forwarding = asyncio.ensure_future(_forward(request, response, upstream, answer, encoder))
    watch = asyncio.ensure_future(_cancel_when_client_leaves(request, forwarding))
    try:
        return await forwarding
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the handler itself is being cancelled (the gateway is stopping)
        return StreamEnd.CLIENT_GONE  # the watch cancelled the forwarding
    finally:
        watch.cancel()


async def _forward(
    request: web.Request,
    response: web.StreamResponse,
    upstream: ChunkStream,
    answer: StreamedAnswer,
    encoder: StreamEncoder,
) -> StreamEnd:
    end = StreamEnd.FINISHED
    try:
        await response.prepare(request)
        try:
            async for chunk in upstream.chunks:
                answer.add(chunk)
                events = encoder.chunk(chunk, answer)
                if events:
                    await response.write(events)
            if answer.finish_reason is None:
                raise UpstreamError(
                    "stream_broken", 502, "the stream ended before the answer finished"
                )
        except UpstreamError as error:
            end = StreamEnd.UPSTREAM_BROKE
            await response.write(encoder.broken(error))
        else:
            await response.write(encoder.finished(answer))
        await response.write_eof()
    except ConnectionError:  # a write to a client that has gone
        return (
            StreamEnd.UPSTREAM_BROKE if end is StreamEnd.UPSTREAM_BROKE else StreamEnd.CLIENT_GONE
        )
    return end


async def _cancel_when_client_leaves(request: web.Request, forwarding: asyncio.Future[Any]) -> None:
    while not forwarding.done():
        transport = request.transport
        if transport is None or transport.is_closing():
            forwarding.cancel()
            return
        await asyncio.sleep(CLIENT_CHECK_SECONDS)


def replay_body(document: dict[str, Any], include_usage: bool) -> bytes:
    """A recorded answer as a stream: one chunk with the whole message, one with the finish
    reason, the usage chunk when asked for, and [DONE]."""
    choice = (document.get("choices") or [{}])[0]
    message = dict(choice.get("message") or {})
    if message.get("tool_calls"):
        message["tool_calls"] = [
            {**call, "index": index} for index, call in enumerate(message["tool_calls"])
        ]
    base: dict[str, Any] = {k: document[k] for k in ("id", "created", "model") if k in document}
    base["object"] = "chat.completion.chunk"
    events = [
        sse_event({**base, "choices": [{"index": 0, "delta": message, "finish_reason": None}]}),
        sse_event(
            {
                **base,
                "choices": [
                    {"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason")}
                ],
            }
        ),
    ]
    if include_usage and document.get("usage") is not None:
        events.append(sse_event({**base, "choices": [], "usage": document["usage"]}))
    return b"".join([*events, DONE])
