"""`POST /v1/messages`: Anthropic's Messages API through the same budget, ledger, transcripts
and routes as chat completions.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Anthropic Messages".

One call: authenticate (the run token as `Authorization: Bearer` or `x-api-key`) → validate
the Messages request (`anthropic_request`) → translate it into the chat request the route is
called with (`anthropic_translation`) → the gateway's own steps, the ones a chat completion
takes (run, model policy, price, reservation with max_tokens clamped or refused, the
upstream call, settlement, ledger) → the answer translated back into an Anthropic Message,
or, streamed, into Anthropic's events (`anthropic_stream`), settled by the shared relay.
Every error, refusals included, is written in Anthropic's shape (`errors.anthropic_body`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from smartspec.gateway.anthropic_request import MessagesRequest, validate_messages_request
from smartspec.gateway.anthropic_stream import MessageStreamEncoder, replay_events
from smartspec.gateway.anthropic_translation import anthropic_message
from smartspec.gateway.chat_request import read_json
from smartspec.gateway.errors import GatewayError
from smartspec.gateway.streaming import SSE_HEADERS
from smartspec.gateway.transcripts import normalise_messages_request
from smartspec.observability import metrics
from smartspec.observability.logs import get_logger

if TYPE_CHECKING:  # app registers this module's route: a runtime import would be circular
    from smartspec.gateway.app import Gateway, OpenedCall

log = get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def messages_handler(gateway: Gateway) -> Handler:
    """The route's handler: every error answered in Anthropic's shape."""

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            return await messages(gateway, request)
        except GatewayError as error:
            return error.anthropic_response()
        except web.HTTPException as error:  # aiohttp's own (say, a body it would not read)
            refusal = GatewayError(
                error.status, "invalid_request_error", error.reason, str(error.status)
            )
            return refusal.anthropic_response()
        except Exception:
            log.exception("Unhandled gateway error", route="/v1/messages")
            internal = GatewayError(500, "server_error", "internal gateway error", "internal")
            return internal.anthropic_response()

    return handle


async def messages(gateway: Gateway, request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    claims = gateway.authenticate(request, api_key=True)
    with gateway.correlated(claims):
        body = await read_json(request, gateway.options.max_body_bytes)
        asked = validate_messages_request(body, gateway.served)
        chat = asked.chat_request()
        opened = await gateway.open_call(claims, asked.model)
        normalised = normalise_messages_request(body)
        if claims.replay_of is not None:
            return await _replay(gateway, opened, asked, normalised)
        reservation = await gateway.reserve(opened, chat)
        message_id = f"msg_{opened.call.call_id}"
        if asked.stream:
            encoder = MessageStreamEncoder(
                message_id=message_id,
                model=asked.model,
                stop_sequences=asked.stop_sequences,
                prompt_token_bound=reservation.granted.hold.prompt_token_bound,
                max_tokens=reservation.granted.max_tokens,
            )
            return await gateway.stream(
                request,
                reservation,
                chat,
                encoder,
                normalised=normalised,
                payload=lambda answer: _json_bytes(encoder.message(answer)),
            )
        answered = await gateway.complete(reservation, chat)
        message = anthropic_message(
            answered.completion.body,
            message_id=message_id,
            model=asked.model,
            stop_sequences=asked.stop_sequences,
            usage=(answered.charge.prompt_tokens, answered.charge.completion_tokens),
        )
        payload = _json_bytes(message)
        gateway.record_transcript(opened.call, normalised, payload)
        metrics.GATEWAY_OVERHEAD.observe(time.perf_counter() - started - answered.upstream_seconds)
        return web.Response(body=payload, content_type="application/json")


async def _replay(
    gateway: Gateway, opened: OpenedCall, asked: MessagesRequest, normalised: dict[str, Any]
) -> web.Response:
    """The recorded Message, at 0 credits: as JSON, or as the events of a live stream."""
    payload = await gateway.recorded(opened, normalised)
    message = json.loads(payload) if payload else {}
    usage = message.get("usage") or {}
    tokens = (int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)))
    gateway.spending.record_replay(opened.account, opened.call, asked.model, tokens)
    if asked.stream:
        return web.Response(body=replay_events(message), headers=SSE_HEADERS)
    return web.Response(body=payload, content_type="application/json")


def _json_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
