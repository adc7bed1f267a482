"""A local OpenAI-compatible model server for tests and benchmarks.

A real HTTP server on 127.0.0.1 (aiohttp), not a mock object: the gateway, the `openai`
client and litellm all reach it over TCP exactly as they would reach a provider. It serves
`POST /v1/chat/completions` and `GET /v1/models`, and `POST /v1/messages` in Anthropic's
format for routes on litellm's Anthropic provider (`anthropic_format`); see
specs/CORE-003-gateway-and-budgets.md for the gateway behaviour the tests drive with it.
It is a stub: every answer is canned, never generated.

Answers are deterministic: the reply comes from `reply_fn(request body)`, prompt tokens
are the message characters // 4 (at least 1), and completion tokens are the reply's
characters // 4 (at least 1), never more than the request's max_tokens; a reply that would
exceed it is cut and finishes with "length". A reply that holds one of the request's `stop`
strings ends before it, with finish reason "stop" and, as vLLM writes it, the choice's
`stop_reason` naming the string (streamed: on the chunk with the finish reason).

Failures are scripted at run time:

- `script`: a queue consumed one item per valid completion request, each "ok" or an HTTP
  status to fail with (429 carries Retry-After); an empty queue answers ok.
- `fail_models`: model -> status, failing every request for that model (fallback tests).
- `default_status`: a status to fail every request with once the script is empty.
- a script item "not-json" answers 200 with an HTML page (a proxy's error), not JSON;
  "no-usage" answers normally but without the usage object (servers that omit it);
  "stall" waits `stall_seconds` before answering (a call past the client's timeout);
  a `Reply` answers with its own content (a string, or made from the request) and finish
  reason: prose, broken JSON, an empty or a truncated answer, code that fails its tests.
- `delay_seconds`: wait this long before answering (timeouts, benchmarks).

`stream: true` is answered as the OpenAI API streams (server-sent events: `data: <chunk>`
lines, then `data: [DONE]`): the role, the same canned answer `chunk_chars` characters per
chunk, each tool call's name and then its arguments in pieces, an empty delta with the finish
reason and, when `stream_options.include_usage` asks for it, a last chunk with empty choices
and the usage (every chunk before it then carries `"usage": null`). Stream faults, from the
same script: "no-usage" leaves the usage chunk out; "stream-cut" closes the connection after
`cut_after_chunks` chunks, mid-body, without `[DONE]`. `chunk_delay_seconds` waits before
each chunk (slow streams, so that a client can leave mid-stream). `streams` records how
each stream ended: "done", "cut", or "client-gone" when the client closed the connection
before the last chunk (a cancelled request, as a provider sees it).

In-process use, from sync tests (a background thread runs its own event loop):

    with StubServer() as stub:
        stub.script.extend([429, "ok"])
        client = openai.OpenAI(base_url=stub.url + "/v1", api_key="x", max_retries=0)

or from async code: `async with StubServer() as stub: ...`. As a process, for benchmarks:

    python tests/stubs/openai_stub.py --port 8199 --latency-ms 50 [--behaviour 503]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from aiohttp import web

if not __package__:  # run as a script (benchmarks): python tests/stubs/openai_stub.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stubs.anthropic_format import message_answer, message_events

__all__ = ["Reply", "ScriptItem", "StreamRecord", "StubServer", "default_reply", "error_body"]


@dataclass(frozen=True)
class Reply:
    """One scripted answer: its content (or a function of the request) and finish reason."""

    content: str | Callable[[dict[str, Any]], str]
    finish_reason: str = "stop"


ScriptItem = int | Literal["ok", "not-json", "no-usage", "stall", "stream-cut"] | Reply


@dataclass
class StreamRecord:
    """One streamed answer as the stub sent it."""

    chunks_sent: int = 0
    ended: Literal["streaming", "done", "cut", "client-gone"] = "streaming"


CREATED = 1_700_000_000
"""The fixed `created` timestamp of every answer, so transcripts are reproducible."""

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "gateway_timeout"),
}


def default_reply(body: dict[str, Any]) -> str:
    """A short text that depends only on the request: the last message, echoed."""
    messages = body.get("messages") or [{}]
    last = _content_text(messages[-1].get("content")) if isinstance(messages[-1], dict) else ""
    return f"stub reply to {len(messages)} message(s): {last[:200]}"


def error_body(status: int, message: str) -> dict[str, Any]:
    """An OpenAI-style error document."""
    error_type, code = _ERRORS.get(status, ("server_error", f"http_{status}"))
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


@dataclass
class StubServer:
    """The stub; every attribute below may be changed while it runs."""

    host: str = "127.0.0.1"
    port: int = 0
    models: list[str] = field(default_factory=lambda: ["stub-model"])
    script: deque[ScriptItem] = field(default_factory=deque)
    fail_models: dict[str, int] = field(default_factory=dict)
    default_status: int | None = None
    reply_fn: Callable[[dict[str, Any]], str] = default_reply
    delay_seconds: float = 0.0
    stall_seconds: float = 3600.0
    retry_after_seconds: int = 0
    model_extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Extra fields of a model's /v1/models entry (a gateway's capabilities, say)."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Every JSON body received on /v1/chat/completions, in order."""
    request_headers: list[dict[str, str]] = field(default_factory=list)
    """The headers of those requests, same order (to check what a gateway forwards)."""
    chunk_chars: int = 4
    """Characters of content (or tool-call arguments) per streamed chunk."""
    chunk_delay_seconds: float = 0.0
    """Wait before each streamed chunk."""
    cut_after_chunks: int = 3
    """A "stream-cut" answer closes the connection after this many chunks."""
    streams: list[StreamRecord] = field(default_factory=list)
    """Every streamed answer, in order, and how it ended."""
    messages_requests: list[dict[str, Any]] = field(default_factory=list)
    """Every JSON body received on /v1/messages (Anthropic's API), in order."""

    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1), init=False)

    @property
    def url(self) -> str:
        """http://127.0.0.1:<port>, without /v1 (OpenAI clients want url + "/v1")."""
        if self._runner is None:
            raise RuntimeError("the stub is not running")
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------ in the caller's loop

    async def start(self) -> None:
        """Listen in the running event loop; with port 0, `port` becomes the chosen one."""
        if self._runner is not None:
            raise RuntimeError("the stub is already running")
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_get("/v1/models", self._list_models)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self.port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> StubServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------ in a background thread

    def start_in_thread(self) -> StubServer:
        """Run the stub on its own event loop in a daemon thread, for sync callers."""
        if self._thread is not None:
            raise RuntimeError("the stub is already running in a thread")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="openai-stub", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout=30)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            raise
        self._loop, self._thread = loop, thread
        return self

    def stop_thread(self) -> None:
        if self._loop is None or self._thread is None:
            return
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def __enter__(self) -> StubServer:
        return self.start_in_thread()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_thread()

    # ------------------------------------------------------------ handlers

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return self._error(400, "the request body is not JSON")
        if not isinstance(body, dict):
            return self._error(400, "the request body must be a JSON object")
        self.requests.append(body)
        self.request_headers.append(dict(request.headers))
        if self.delay_seconds > 0:
            await asyncio.sleep(self.delay_seconds)

        refusal = _refusal(body)
        if refusal is not None:
            return self._error(400, refusal)
        step = self._next_step(body["model"])
        if isinstance(step, web.Response):
            return step
        if step == "stall":
            await asyncio.sleep(self.stall_seconds)
        answer = self._answer(body, step)
        if body.get("stream"):
            return await self._stream(request, body, answer, step)
        if step == "no-usage":
            del answer["usage"]
        return web.json_response(answer)

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        answer: dict[str, Any],
        step: ScriptItem | None,
    ) -> web.StreamResponse:
        """The answer as server-sent events, with the scripted stream fault if any."""
        chunks = completion_chunks(
            answer,
            include_usage=wants_usage(body),
            with_usage=step != "no-usage",
            chunk_chars=self.chunk_chars,
        )
        record = StreamRecord()
        self.streams.append(record)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        events = [sse_event(chunk) for chunk in chunks] + [sse_event("[DONE]")]
        try:
            for event in events:
                if step == "stream-cut" and record.chunks_sent == self.cut_after_chunks:
                    record.ended = "cut"
                    if request.transport is not None:
                        request.transport.close()  # mid-body: no last chunk, no [DONE]
                    return response
                if self.chunk_delay_seconds > 0:
                    await asyncio.sleep(self.chunk_delay_seconds)
                await response.write(event)
                record.chunks_sent += 1
            await response.write_eof()
        except ConnectionResetError:
            record.ended = "client-gone"
            return response
        record.ended = "done"
        return response

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        """Anthropic's Messages API, canned (`anthropic_format`), for routes on litellm's
        Anthropic provider; the body is kept in `messages_requests`."""
        body = await request.json()
        self.messages_requests.append(body)
        answer = message_answer(body, self.reply_fn(body), next(self._ids))
        if not body.get("stream"):
            return web.json_response(answer)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in message_events(answer, self.chunk_chars):
            await response.write(event)
        await response.write_eof()
        return response

    def _answer(self, body: dict[str, Any], step: ScriptItem | None) -> dict[str, Any]:
        """The canned completion, or the scripted Reply's content in its place."""
        answer = self._completion(body, body["model"], body["messages"], _max_tokens(body))
        if isinstance(step, Reply):
            content = step.content(body) if callable(step.content) else step.content
            choice = answer["choices"][0]
            choice["message"] = {"role": "assistant", "content": content}
            choice["finish_reason"] = step.finish_reason
            answer["usage"]["completion_tokens"] = max(1, len(content) // 4)
            answer["usage"]["total_tokens"] = (
                answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
            )
        return answer

    def _next_step(self, model: str) -> web.Response | ScriptItem | None:
        """The scripted failure for this request, or the item that shapes its answer."""
        if model in self.fail_models:
            return self._error(self.fail_models[model], f"scripted failure for model {model}")
        step: ScriptItem | None = self.script.popleft() if self.script else None
        if step is None and self.default_status is not None:
            step = self.default_status
        if step == "not-json":
            return web.Response(status=200, text="<html>upstream proxy error</html>")
        if isinstance(step, int):
            return self._error(step, f"scripted failure {step}")
        return step

    async def _list_models(self, request: web.Request) -> web.Response:
        data = [
            {
                "id": name,
                "object": "model",
                "created": CREATED,
                "owned_by": "smartspec-stub",
                **self.model_extras.get(name, {}),
            }
            for name in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    def _completion(
        self, body: dict[str, Any], model: str, messages: list[Any], max_tokens: int | None
    ) -> dict[str, Any]:
        prompt_chars = sum(
            len(_content_text(m.get("content"))) for m in messages if isinstance(m, dict)
        )
        prompt_tokens = max(1, prompt_chars // 4)
        reply, stop_reason = _cut_at_stop(self.reply_fn(body), body.get("stop"))
        finish_reason = "stop"
        completion_tokens = max(1, len(reply) // 4)
        if max_tokens is not None and completion_tokens > max_tokens:
            reply = reply[: max_tokens * 4]
            completion_tokens = max_tokens
            finish_reason = "length"
        message: dict[str, Any] = {"role": "assistant", "content": reply}
        tool = _tool_to_call(body, messages)
        if tool is not None:
            # A canned call of the first function tool, as a tool-using model would answer.
            arguments = json.dumps({"reason": "stub"})
            call = {
                "id": "call_stub_1",
                "type": "function",
                "function": {"name": tool, "arguments": arguments},
            }
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish_reason = "tool_calls"
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "finish_reason": finish_reason,
            "logprobs": None,
        }
        if stop_reason is not None and finish_reason == "stop":
            choice["stop_reason"] = stop_reason
        return {
            "id": f"chatcmpl-stub-{next(self._ids):06d}",
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "system_fingerprint": "smartspec-stub",
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _error(self, status: int, message: str) -> web.Response:
        headers = {"Retry-After": str(self.retry_after_seconds)} if status == 429 else None
        return web.json_response(error_body(status, message), status=status, headers=headers)


def wants_usage(body: dict[str, Any]) -> bool:
    """Whether the request asked for the usage chunk (`stream_options.include_usage`)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def sse_event(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


def completion_chunks(
    answer: dict[str, Any], *, include_usage: bool, with_usage: bool, chunk_chars: int
) -> list[dict[str, Any]]:
    """The chunks of a whole `chat.completion` answer; `with_usage` False leaves the usage
    chunk out even when asked for (a server that omits it)."""
    choice = answer["choices"][0]
    message = choice["message"]
    base = {
        "id": answer["id"],
        "object": "chat.completion.chunk",
        "created": answer["created"],
        "model": answer["model"],
        "system_fingerprint": answer.get("system_fingerprint"),
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        extra = {"usage": None} if include_usage else {}
        return {**base, "choices": choices, **extra}

    chunks = [chunk({"role": "assistant", "content": ""})]
    content = message.get("content") or ""
    chunks += [chunk({"content": piece}) for piece in _pieces(content, chunk_chars)]
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        opening = {"name": function["name"], "arguments": ""}
        chunks.append(
            chunk(
                {
                    "tool_calls": [
                        {"index": index, "id": call["id"], "type": "function", "function": opening}
                    ]
                }
            )
        )
        chunks += [
            chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            for piece in _pieces(function["arguments"], chunk_chars)
        ]
    finish = chunk({}, choice["finish_reason"])
    if "stop_reason" in choice:
        finish["choices"][0]["stop_reason"] = choice["stop_reason"]
    chunks.append(finish)
    if include_usage and with_usage:
        chunks.append({**base, "choices": [], "usage": answer["usage"]})
    return chunks


def _cut_at_stop(reply: str, stop: object) -> tuple[str, str | None]:
    """The reply up to the first stop sequence it holds, and that sequence (or None)."""
    sequences = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    found = [
        (reply.find(sequence), sequence)
        for sequence in sequences
        if isinstance(sequence, str) and sequence and sequence in reply
    ]
    if not found:
        return reply, None
    position, sequence = min(found)
    return reply[:position], sequence


def _pieces(text: str, size: int) -> list[str]:
    return [text[start : start + size] for start in range(0, len(text), size)]


def _refusal(body: dict[str, Any]) -> str | None:
    """Why a completion request is invalid, or None."""
    max_tokens = _max_tokens(body)
    if body.get("stream_options") is not None and not body.get("stream"):
        return "stream_options is only allowed when stream is true"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "'model' is required"
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return "'messages' must be a non-empty array"
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        return "'max_tokens' must be a positive integer"
    return None


def _tool_to_call(body: dict[str, Any], messages: list[Any]) -> str | None:
    """The first function tool's name when the model should call one: tools are offered,
    tool_choice is not "none" and the last message is not already a tool's answer."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools or body.get("tool_choice") == "none":
        return None
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return None
    first = tools[0] if isinstance(tools[0], dict) else {}
    name = (first.get("function") or {}).get("name")
    return name if isinstance(name, str) else None


def _max_tokens(body: dict[str, Any]) -> Any:
    # The newer name wins; clients send one or the other.
    newer = body.get("max_completion_tokens")
    return newer if newer is not None else body.get("max_tokens")


def _content_text(content: object) -> str:
    # Content is a string or a list of parts; only text parts count.
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _parse_fail_model(value: str) -> tuple[str, int]:
    model, separator, status = value.rpartition("=")
    if not separator or not model or not status.isdigit():
        raise argparse.ArgumentTypeError(f"expected MODEL=STATUS, got {value!r}")
    return model, int(status)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local OpenAI-compatible stub server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--behaviour",
        default="ok",
        help='"ok", or an HTTP status (429, 500, 503, ...) to fail every completion with',
    )
    parser.add_argument("--latency-ms", type=int, default=0, help="delay before each answer")
    parser.add_argument(
        "--chunk-delay-ms", type=int, default=0, help="delay before each streamed chunk"
    )
    parser.add_argument(
        "--fail-model",
        type=_parse_fail_model,
        action="append",
        default=[],
        metavar="MODEL=STATUS",
        help="always fail this model with this status (repeatable)",
    )
    parser.add_argument("--model", action="append", default=None, help="listed by /v1/models")
    args = parser.parse_args(argv)
    if args.behaviour != "ok" and not (
        args.behaviour.isdigit() and 400 <= int(args.behaviour) <= 599
    ):
        parser.error(f'--behaviour must be "ok" or an HTTP error status, got {args.behaviour!r}')
    stub = StubServer(
        host=args.host,
        port=args.port,
        models=args.model or ["stub-model"],
        fail_models=dict(args.fail_model),
        default_status=None if args.behaviour == "ok" else int(args.behaviour),
        delay_seconds=args.latency_ms / 1000,
        chunk_delay_seconds=args.chunk_delay_ms / 1000,
    )
    asyncio.run(_serve(stub))


async def _serve(stub: StubServer) -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    async with stub:
        print(json.dumps({"url": stub.url, "port": stub.port}), flush=True)
        await stopped.wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
