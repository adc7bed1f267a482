"""A lean transport for OpenAI-compatible servers, run by the litellm Router as a provider.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Routing".

Routes with `transport: openai-compatible` (vLLM, Ollama, any server that speaks the Chat
Completions protocol) are still deployments of the Router: it picks them, retries them,
falls back from them and times them out. Only the last step differs: instead of litellm's
OpenAI provider (the OpenAI SDK's request builder, httpx and two response models), one
aiohttp POST of the JSON body and one response model. On this project's benchmark that
is most of what litellm costs per call (see the section "Measured").

Failures are raised as litellm's exception classes, by HTTP status, so that the Router
retries and falls back exactly as it does for its own providers, and router._call maps
them onto the gateway's error codes.

A streamed request (`stream: true`) is the same POST; once the server answers 200 its
server-sent events are read as they arrive (`ServerSentChunks`), and closing them closes the
connection, which is how the server learns the request was cancelled.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import httpx
import litellm
from litellm import exceptions as errors
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import GenericStreamingChunk, ModelResponse

PROVIDER = "smartspec_openai_compatible"
"""The provider prefix of these deployments' litellm model strings."""

# Keys litellm adds to a provider's parameters that are its own, not the upstream's.
_LITELLM_ONLY = frozenset({"max_retries", "stream"})
_CONNECTIONS = 1024
_MESSAGE_LIMIT = 500


class OpenAICompatibleTransport(CustomLLM):
    """POSTs chat completions to `<api_base>/chat/completions` over one pooled session."""

    def __init__(self) -> None:
        super().__init__()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=_CONNECTIONS),
                json_serialize=lambda value: json.dumps(value, ensure_ascii=False),
            )
        return self._session

    async def acompletion(  # type: ignore[override]  # litellm calls it with keywords only
        self,
        *,
        model: str,
        messages: list[Any],
        api_base: str,
        api_key: str | None,
        optional_params: dict[str, Any],
        timeout: float | httpx.Timeout | None = None,  # noqa: ASYNC109 - litellm's keyword
        headers: dict[str, str] | None = None,
        **_: Any,
    ) -> ModelResponse:
        """litellm's provider entry: a litellm-transport route fell back to one of ours."""
        body = {"model": model, "messages": messages}
        body.update({k: v for k, v in optional_params.items() if k not in _LITELLM_ONLY})
        answer = await self.send(
            body, api_base=api_base, api_key=api_key, timeout=timeout, headers=headers
        )
        return ModelResponse(**answer)

    async def astreaming(  # type: ignore[override]  # litellm calls it with keywords only
        self,
        *,
        model: str,
        messages: list[Any],
        api_base: str,
        api_key: str | None,
        optional_params: dict[str, Any],
        timeout: float | httpx.Timeout | None = None,  # noqa: ASYNC109 - litellm's keyword
        headers: dict[str, str] | None = None,
        **_: Any,
    ) -> AsyncIterator[GenericStreamingChunk]:
        """litellm's streaming provider entry: a litellm-transport stream fell back to ours."""
        body: dict[str, Any] = {"model": model, "messages": messages}
        body.update({k: v for k, v in optional_params.items() if k not in _LITELLM_ONLY})
        body.update(stream=True, stream_options={"include_usage": True})
        chunks = await self.open_stream(
            body, api_base=api_base, api_key=api_key, timeout=timeout, headers=headers
        )
        try:
            async for chunk in chunks:
                for generic in _generic_chunks(chunk):
                    yield generic
        finally:
            await chunks.aclose()

    async def open_stream(
        self,
        body: dict[str, Any],
        *,
        api_base: str,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,  # noqa: ASYNC109 - the deployment's timeout
        headers: dict[str, str] | None = None,
    ) -> ServerSentChunks:
        """POST a streamed `body`; once the server answers 200, its events to read.

        The deployment's timeout bounds the wait for the answer and every gap between two
        events, not the whole stream (a long answer streams for longer than any one wait).
        """
        model = str(body.get("model"))
        url, request_headers = _target(api_base, api_key, headers)
        seconds = _seconds(timeout)
        with _transport_errors(url, seconds, model):
            reply = await self._client().post(
                url,
                json=body,
                headers=request_headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds),
            )
            if reply.status != 200:
                raw = await reply.read()
                reply.release()
                raise _status_error(reply.status, _error_message(raw, reply.status), model)
        return ServerSentChunks(reply, model)

    async def send(
        self,
        body: dict[str, Any],
        *,
        api_base: str,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,  # noqa: ASYNC109 - the deployment's timeout
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """POST `body` and return the server's answer as it sent it, once checked."""
        model = str(body.get("model"))
        url, request_headers = _target(api_base, api_key, headers)
        seconds = _seconds(timeout)
        with _transport_errors(url, seconds, model):
            async with self._client().post(
                url,
                json=body,
                headers=request_headers,
                timeout=aiohttp.ClientTimeout(total=seconds),
            ) as reply:
                raw = await reply.read()
                status = reply.status
        if status != 200:
            raise _status_error(status, _error_message(raw, status), model)
        return _checked_answer(raw, model)


class ServerSentChunks:
    """The chunks of one streamed answer, parsed from its server-sent events as they arrive:
    each `data:` line's JSON object until `data: [DONE]` or the end of the body."""

    def __init__(self, reply: aiohttp.ClientResponse, model: str) -> None:
        self._reply = reply
        self._model = model

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self.events()

    async def aclose(self) -> None:
        """Close the connection (not back to the pool): the server sees the request end."""
        self._reply.close()

    async def events(self) -> AsyncGenerator[dict[str, Any], None]:
        """Each event's chunk, in order."""
        try:
            async for line in self._reply.content:
                data = line.strip()
                if not data.startswith(b"data:"):
                    continue  # blank separators, comments (keep-alives), event names
                data = data[len(b"data:") :].strip()
                if data == b"[DONE]":
                    return
                yield _checked_chunk(data, self._model)
        except TimeoutError:
            raise errors.Timeout(
                message="the stream paused past the deployment's timeout",
                model=self._model,
                llm_provider=PROVIDER,
            ) from None
        except (aiohttp.ClientError, OSError) as error:
            raise errors.APIConnectionError(
                message=f"the stream broke: {error}", llm_provider=PROVIDER, model=self._model
            ) from None
        except ValueError as error:  # a line longer than the reader's limit
            raise _malformed(self._model, f"unreadable stream event: {error}") from None


def _checked_chunk(data: bytes, model: str) -> dict[str, Any]:
    """One event's chunk, or a clear error: an event that is not a JSON object, or the
    error event a server sends when it fails mid-stream."""
    try:
        chunk = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _malformed(model, f"a stream event is not JSON: {_clip(data)}") from None
    if not isinstance(chunk, dict):
        raise _malformed(model, "a stream event is not a JSON object")
    error = chunk.get("error")
    if error is not None:
        message = error.get("message") if isinstance(error, dict) else error
        raise errors.APIError(
            status_code=502,
            message=f"the server failed mid-stream: {_clip(str(message).encode())}",
            llm_provider=PROVIDER,
            model=model,
        )
    return chunk


def _generic_chunks(chunk: dict[str, Any]) -> list[GenericStreamingChunk]:
    """One server chunk in litellm's provider-neutral form (one per tool-call fragment)."""
    choices = chunk.get("choices") or [{}]
    delta = choices[0].get("delta") or {}
    finish_reason = choices[0].get("finish_reason") or ""
    calls = delta.get("tool_calls") or [None]
    generic: list[GenericStreamingChunk] = []
    for position, call in enumerate(calls):
        first, last = position == 0, position == len(calls) - 1
        tool_use = None
        if isinstance(call, dict):
            function = call.get("function") or {}
            tool_use = {
                "id": call.get("id"),
                "type": "function",
                "function": {
                    "name": function.get("name"),
                    "arguments": function.get("arguments") or "",
                },
                "index": call.get("index", position),
            }
        generic.append(
            {
                "text": (delta.get("content") or "") if first else "",
                "tool_use": tool_use,  # type: ignore[typeddict-item]
                "is_finished": bool(finish_reason) and last,
                "finish_reason": finish_reason if last else "",
                "usage": chunk.get("usage") if last else None,
                "index": 0,
            }
        )
    return generic


def _target(
    api_base: str, api_key: str | None, headers: dict[str, str] | None
) -> tuple[str, dict[str, str]]:
    """The completions URL under `api_base` and the request's headers."""
    request_headers = {**(headers or {}), "Content-Type": "application/json"}
    if api_key:
        request_headers["Authorization"] = f"Bearer {api_key}"
    return api_base.rstrip("/") + "/chat/completions", request_headers


def _seconds(timeout: float | httpx.Timeout | None) -> float | None:
    if isinstance(timeout, httpx.Timeout):
        return timeout.read
    return timeout


def _checked_answer(raw: bytes, model: str) -> dict[str, Any]:
    """The provider's answer, or a clear error naming the fault."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _malformed(model, f"the answer is not JSON: {_clip(raw)}") from None
    if not isinstance(data, dict):
        raise _malformed(model, "the answer is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _malformed(model, "the answer has no choices")
    if not all(isinstance(choice, dict) for choice in choices):
        raise _malformed(model, "the answer's choices are not objects")
    usage = data.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise _malformed(model, "the answer's usage is not an object")
    return data


def _malformed(model: str, message: str) -> Exception:
    # 502 from the gateway: the Router may try the next deployment or fallback.
    return errors.APIError(
        status_code=502,
        message=f"malformed answer: {message}",
        llm_provider=PROVIDER,
        model=model,
    )


# litellm's class for each status, as its own OpenAI provider raises them; 408 is a timeout.
_STATUS_ERRORS: dict[int, Callable[..., Exception]] = {
    401: errors.AuthenticationError,
    403: errors.PermissionDeniedError,
    404: errors.NotFoundError,
    422: errors.UnprocessableEntityError,
    429: errors.RateLimitError,
    503: errors.ServiceUnavailableError,
}


def _status_error(status: int, message: str, model: str) -> Exception:
    """The exception litellm's Router retries, falls back on or gives up on for `status`."""
    common: dict[str, Any] = {"message": message, "llm_provider": PROVIDER, "model": model}
    if status == 408:
        return errors.Timeout(**common)
    response = httpx.Response(status, request=httpx.Request("POST", "http://upstream"))
    kind: Callable[..., Exception] | None = _STATUS_ERRORS.get(status)
    if kind is None:
        if 400 <= status < 500:
            kind = errors.BadRequestError
        elif status >= 500:
            kind = errors.InternalServerError
        else:
            return errors.APIError(status_code=status, **common)
    return kind(**common, response=response)


def _error_message(raw: bytes, status: int) -> str:
    """The provider's own message when it sent an OpenAI-style error body."""
    try:
        error = json.loads(raw).get("error")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        error = None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return f"HTTP {status}: {_clip(error['message'].encode())}"
    return f"HTTP {status}: {_clip(raw)}"


def _clip(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


TRANSPORT = OpenAICompatibleTransport()


def register() -> None:
    """Make the provider known to litellm (idempotent; litellm's provider map is global)."""
    entries = [e for e in litellm.custom_provider_map if e.get("provider") != PROVIDER]
    litellm.custom_provider_map = [*entries, {"provider": PROVIDER, "custom_handler": TRANSPORT}]


@contextlib.contextmanager
def _transport_errors(url: str, seconds: float | None, model: str) -> Iterator[None]:
    """A request that timed out or could not connect, as the litellm errors the Router's
    retries and fallbacks act on."""
    try:
        yield
    except TimeoutError:
        raise errors.Timeout(
            message=f"no answer from {url} within {seconds:g} s",
            model=model,
            llm_provider=PROVIDER,
        ) from None
    except (aiohttp.ClientError, OSError) as error:
        raise errors.APIConnectionError(
            message=f"cannot reach {url}: {error}", llm_provider=PROVIDER, model=model
        ) from None
