"""Routing model calls through a litellm Router built from the gateway configuration.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Routing".

litellm is imported only here (and in litellm_costs). Its import would otherwise try to
download a model cost map at start-up; the environment variable below makes it use the map
bundled with the package, because a gateway must start the same way with no internet.

A streamed call (`open_stream`) goes through the same Router, retries and fallbacks until the
upstream answers; its chunks then come back as plain JSON objects (`ChunkStream`), whichever
transport served them, with usage only when the upstream reported it.
"""

from __future__ import annotations

import functools
import logging
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

import litellm
import openai
from litellm.router import Router

from smartspec.gateway import openai_compatible
from smartspec.gateway.config import GatewayConfig, ModelRoute

litellm.telemetry = False
litellm.suppress_debug_info = True
# litellm logs every call at INFO; at gateway rates that is most of a core spent on lines
# nobody reads (our own access metrics and ledger already record each call).
for _name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class UpstreamError(Exception):
    """Every deployment and fallback failed; `kind` is a bounded label for metrics."""

    def __init__(self, kind: str, status: int, message: str) -> None:
        self.kind = kind
        self.status = status
        self.message = message
        super().__init__(f"{kind}: {message}")


@dataclass(frozen=True)
class Completion:
    """What the gateway needs from a successful upstream call."""

    body: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    served_by: str
    usage_reported: bool = True
    """False when the answer carried no usable token counts (the gateway then charges
    the reservation: tokens were spent, and an unknown amount is never charged as 0)."""


def build_router(config: GatewayConfig) -> Router:
    """A litellm Router: deployments, retries, fallbacks and per-deployment timeouts."""
    model_list = []
    for route in config.models:
        if route.local:
            continue  # per-run endpoints: see complete_local
        # The Router owns retries and fallbacks; the SDK under it must not retry on its own,
        # or every retry would multiply (and fallbacks would come late).
        litellm_model = route.litellm_model
        if route.transport == "openai-compatible":
            litellm_model = f"{openai_compatible.PROVIDER}/{route.upstream_model}"
        params: dict[str, Any] = {
            "model": litellm_model,
            "timeout": route.timeout_seconds,
            "max_retries": 0,
        }
        if route.api_base:
            params["api_base"] = route.api_base
        if route.api_key_env:
            params["api_key"] = f"os.environ/{route.api_key_env}"
        else:
            # OpenAI-compatible local servers accept any key; litellm insists on one.
            params["api_key"] = "unused"
        model_list.append({"model_name": route.name, "litellm_params": params})
    openai_compatible.register()
    return Router(
        model_list=model_list,
        fallbacks=[{name: targets} for name, targets in config.fallbacks.items()],
        num_retries=config.num_retries,
        retry_after=0,
        allowed_fails=1000,
        disable_cooldowns=True,
    )


# litellm hands every request with `tools` to its MCP gateway handler first, and that
# handler imports the optional `mcp` package (litellm[mcp]): without it every tool call failed
# as a connection error. The gateway accepts function tools only (app._validate_tools), so
# there is nothing for that handler to do; the flag skips it.
_SKIP_MCP: dict[str, Any] = {"_skip_mcp_handler": True}


async def complete(
    router: Router, request: dict[str, Any], *, openai_compatible: bool = False
) -> Completion:
    """One chat completion; raises UpstreamError with a clear class when all routes fail."""
    if openai_compatible:
        return await _call(_route_openai_compatible(router, request), request["model"])
    return await _call(router.acompletion(**request, **_SKIP_MCP), request["model"])


def _route_openai_compatible(router: Router, request: dict[str, Any]) -> Awaitable[Any]:
    """The Router's selection, retries, fallbacks and timeouts around the gateway's own call.

    router.acompletion would run each attempt through litellm.acompletion: its parameter
    mapping, a worker-thread hop, its logging and its own cost calculation, work the
    gateway does itself (allow-listed fields, pricing, ledger). Measured in-process on this
    project's machine: 2.8-4.0 ms of CPU per call that way, 0.8 through the Router's generic
    entry, which still selects the deployment, retries, falls back and times out, and hands
    each attempt the chosen deployment's parameters (specs/CORE-003, "Measured"). It is
    litellm's internal API (the one its proxy serves its other endpoints through):
    pyproject allows only the tested release line, and the openai-compatible tests, both
    fallback directions included, go through it.
    """
    fields = {key: value for key, value in request.items() if key != "model"}
    # A private method (see above).
    return router._ageneric_api_call_with_fallbacks(
        model=request["model"],
        original_function=functools.partial(_attempt, request),
        **fields,
    )


async def _attempt(request: dict[str, Any], **deployment: Any) -> Any:
    """One attempt on the deployment the Router chose (`deployment`: its parameters)."""
    upstream_model = str(deployment["model"])
    if upstream_model.startswith(f"{openai_compatible.PROVIDER}/"):
        body = {**request, "model": upstream_model.split("/", 1)[1]}
        send = (
            openai_compatible.TRANSPORT.open_stream
            if request.get("stream")
            else openai_compatible.TRANSPORT.send
        )
        return await send(
            body,
            api_base=deployment["api_base"],
            api_key=deployment.get("api_key"),
            timeout=deployment.get("timeout"),
        )
    # A fallback to a route on litellm's own providers.
    return await litellm.acompletion(**deployment, **_SKIP_MCP)


async def close_transports() -> None:
    """Close the connection pool of openai-compatible routes (at shutdown)."""
    await openai_compatible.TRANSPORT.close()


async def _call(call: Awaitable[Any], model: str) -> Completion:
    response = await _answer(call)
    # The gateway's own transport returns the server's answer as sent; litellm, its model.
    if isinstance(response, dict):
        body: dict[str, Any] = response
    else:
        body = response.model_dump(mode="json", exclude_none=True)
    if "choices" not in body:
        raise UpstreamError("malformed_answer", 502, "the provider's answer has no choices")
    served_by = str(body.get("model", model))
    usage = reported_usage(body.get("usage"))
    if usage is None:
        return Completion(body, 0, 0, served_by, usage_reported=False)
    return Completion(body, *usage, served_by)


async def _answer(call: Awaitable[Any]) -> Any:
    """What the Router (or litellm) returned; UpstreamError when every route failed."""
    try:
        return await call
    except openai.APITimeoutError as error:
        raise UpstreamError("timeout", 504, _message(error)) from error
    except openai.APIConnectionError as error:
        raise UpstreamError("unreachable", 502, _message(error)) from error
    except openai.APIStatusError as error:
        raise UpstreamError(*_classify(error.status_code), _message(error)) from error
    except openai.OpenAIError as error:
        # litellm maps every provider failure onto the OpenAI SDK's error classes.
        raise UpstreamError("provider_error", 502, _message(error)) from error


def reported_usage(usage: object) -> tuple[int, int] | None:
    """(prompt, completion) tokens when the answer reports them as counts, else None.

    A prompt of 0 tokens counts as not reported: no model reads nothing, and litellm's
    providers fill zeros in when the server sent no usage at all.
    """
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not (_is_count(prompt) and _is_count(completion)) or prompt == 0:
        return None
    return prompt, completion


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _local_params(
    route: ModelRoute, endpoint: str, request: dict[str, Any], retries: int
) -> dict[str, Any]:
    """litellm's arguments for a call to one run's local model server."""
    return {
        **request,
        "model": route.litellm_model,
        "api_base": endpoint,
        "api_key": "unused",
        "timeout": route.timeout_seconds,
        "max_retries": 0,
        "num_retries": retries,
        **_SKIP_MCP,
    }


async def complete_local(
    route: ModelRoute, endpoint: str, request: dict[str, Any], retries: int
) -> Completion:
    """A call to one run's local model server (the sidecar in its generator pod)."""
    params = _local_params(route, endpoint, request, retries)
    return await _call(litellm.acompletion(**params), request["model"])


# ---------------------------------------------------------------------- streams


@dataclass(frozen=True)
class ChunkStream:
    """An upstream's streamed answer: its chunks as JSON objects, as they arrive, and how to
    stop it. Iterating raises UpstreamError when the stream breaks; `close` (idempotent)
    closes the upstream connection, which cancels the request there."""

    chunks: AsyncIterator[dict[str, Any]]
    close: Callable[[], Awaitable[None]]


async def open_stream(
    router: Router, request: dict[str, Any], *, openai_compatible: bool = False
) -> ChunkStream:
    """A streamed chat completion, once a route answered; UpstreamError when all failed."""
    if openai_compatible:
        response = await _answer(_route_openai_compatible(router, request))
    else:
        response = await _answer(router.acompletion(**request, **_SKIP_MCP))
    return _chunk_stream(response)


async def open_local_stream(
    route: ModelRoute, endpoint: str, request: dict[str, Any], retries: int
) -> ChunkStream:
    """A streamed call to one run's local model server."""
    params = _local_params(route, endpoint, request, retries)
    return _chunk_stream(await _answer(litellm.acompletion(**params)))


def _chunk_stream(response: Any) -> ChunkStream:
    """Either transport's stream as a ChunkStream: the gateway's own events as sent, or
    litellm's chunk objects as JSON (an openai-compatible route may have fallen back to a
    litellm one, so the type decides, not the route)."""
    source = (
        response.events()
        if isinstance(response, openai_compatible.ServerSentChunks)
        else _litellm_chunks(response)
    )
    chunks = _broken_as_upstream_error(source)

    async def close() -> None:
        try:  # finalise the generators now, not at garbage collection
            await chunks.aclose()
            await source.aclose()
        finally:
            await response.aclose()

    return ChunkStream(chunks, close)


async def _litellm_chunks(stream: Any) -> AsyncGenerator[dict[str, Any], None]:
    """litellm's chunks as JSON objects, without the usage it makes up.

    When the provider sent no usage, litellm's last chunk carries counts of its own tokenizer
    (stream_chunk_builder). Those are litellm's estimate, not the provider's report: a usage
    counts only when a chunk the provider sent carried one (litellm keeps those in
    `stream.chunks`, an internal, hence the pinned release line).
    """
    async for chunk in stream:
        if chunk is None:  # litellm's placeholder after a fallback that did not stream
            continue
        body: dict[str, Any] = chunk.model_dump(mode="json", exclude_none=True)
        if "usage" in body:
            if not _provider_reported_usage(stream):
                del body["usage"]
            if all(_is_empty(choice) for choice in body.get("choices", [])):
                body["choices"] = []  # the usage chunk, as OpenAI sends it
                if "usage" not in body:
                    continue
        yield body


def _provider_reported_usage(stream: Any) -> bool:
    return any(getattr(chunk, "usage", None) is not None for chunk in getattr(stream, "chunks", []))


def _is_empty(choice: dict[str, Any]) -> bool:
    return not choice.get("finish_reason") and not any(choice.get("delta", {}).values())


async def _broken_as_upstream_error(
    chunks: AsyncIterator[dict[str, Any]],
) -> AsyncGenerator[dict[str, Any], None]:
    """The chunks; a failure mid-stream is an UpstreamError (the gateway's own kind)."""
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as error:  # any failure of the upstream ends the stream the same way
        raise UpstreamError("stream_broken", 502, _message(error)) from error


def _classify(status: int) -> tuple[str, int]:
    """A bounded error class and the status the gateway answers with."""
    if status == 429:
        return "rate_limited", 429
    if status in {401, 403}:
        return "provider_auth", 502
    if 400 <= status < 500:
        return "bad_request", 400
    return "provider_error", 502


def _message(error: Exception) -> str:
    text = str(error)
    return text if len(text) <= 500 else text[:497] + "..."
