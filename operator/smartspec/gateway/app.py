"""The gateway's HTTP API: OpenAI-compatible chat completions, budgeted and recorded.

Contract: specs/CORE-003-gateway-and-budgets.md, sections "Protocol" and "Errors".

One chat completion: authenticate the run token → validate the request → check the run is
still active → check the budget's model policy → reserve the worst case (clamping
max_tokens to what is left, or refusing) → call upstream through litellm → settle the actual
cost (or release on failure) → record ledger entries and the transcript. Every refusal
happens before any provider is contacted and costs nothing. The spending decisions are
`spending`'s; this module maps them onto HTTP. A streamed call (`stream: true`) takes the same
steps up to the upstream call; `streaming` relays it, and it is settled however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from smartspec.api.gateway import STRUCTURED_OUTPUT_FIELD
from smartspec.gateway import anthropic_messages
from smartspec.gateway.accounting import BudgetUnavailableError, LeaseAccount, LeaseSettings
from smartspec.gateway.chat_request import ChatRequest, read_json, validate_chat_request
from smartspec.gateway.config import GatewayConfig
from smartspec.gateway.errors import GatewayError, fail_closed, refused
from smartspec.gateway.router import (
    ChunkStream,
    Completion,
    UpstreamError,
    build_router,
    close_transports,
    complete,
    complete_local,
    open_local_stream,
    open_stream,
)
from smartspec.gateway.runs import RunCache, local_endpoint
from smartspec.gateway.spending import Granted, Refused, RunLimits, Spending
from smartspec.gateway.streaming import (
    SSE_HEADERS,
    ChatEncoder,
    StreamedAnswer,
    StreamEncoder,
    relay,
    replay_body,
)
from smartspec.gateway.transcripts import (
    TranscriptMissingError,
    load_transcript,
    normalise_request,
    store_transcript,
)
from smartspec.kube.client import KubeClient, KubeError
from smartspec.logic.budget import model_allowed
from smartspec.logic.ledger import Attribution
from smartspec.logic.pricing import ModelPrice, PriceTable, UnknownModelPrice
from smartspec.logic.run_tokens import InvalidRunToken, RunTokenClaims, verify_run_token
from smartspec.logic.spending import Charge, StreamEnd
from smartspec.observability import metrics
from smartspec.observability.logs import bind_correlation, get_logger
from smartspec.storage import ObjectStore

log = get_logger(__name__)


@dataclass
class GatewayOptions:
    """Tunables taken from GatewaySettings."""

    replica: str
    lease_seconds: int
    flush_seconds: float
    lease_factor: int
    lease_max_fraction: int
    idle_release_seconds: float
    max_body_bytes: int
    run_cache_seconds: float


@dataclass(frozen=True)
class OpenedCall:
    """A call whose run is active and whose budget allows its model: what it runs under."""

    claims: RunTokenClaims
    run: dict[str, Any]
    account: LeaseAccount
    call: Attribution


@dataclass(frozen=True)
class Reservation:
    """An opened call, priced, with the hold granted for it."""

    opened: OpenedCall
    price: ModelPrice
    granted: Granted


@dataclass(frozen=True)
class Answered:
    """An upstream answer that was not streamed, and what it was charged."""

    completion: Completion
    charge: Charge
    upstream_seconds: float


@dataclass
class Gateway:
    """The process's state: configuration, prices, clients, budget books and run cache."""

    config: GatewayConfig
    prices: PriceTable
    token_keys: tuple[bytes, ...]
    kube: KubeClient
    store: ObjectStore
    options: GatewayOptions
    router: Any = None
    accounts: dict[tuple[str, str], LeaseAccount] = field(default_factory=dict)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    served: frozenset[str] = frozenset()
    structured: frozenset[str] = frozenset()
    """Models whose routes enforce a JSON schema given as response_format."""
    runs: RunCache = field(init=False)
    spending: Spending = field(init=False)

    def __post_init__(self) -> None:
        self.router = self.router or build_router(self.config)
        self.served = frozenset(self.config.model_names)
        self.runs = RunCache(self.kube, self.options.run_cache_seconds)
        self.spending = Spending(self.options.replica, self._spawn)

    # ------------------------------------------------------------------ helpers

    def account(self, namespace: str, budget: str) -> LeaseAccount:
        key = (namespace, budget)
        if key not in self.accounts:
            self.accounts[key] = LeaseAccount(
                namespace=namespace,
                budget=budget,
                settings=LeaseSettings(
                    holder=self.options.replica,
                    lease_seconds=self.options.lease_seconds,
                    lease_factor=self.options.lease_factor,
                    lease_max_fraction=self.options.lease_max_fraction,
                    idle_release_seconds=self.options.idle_release_seconds,
                    # A second of demand, so a burst like the last second's fits without a
                    # write (clients calling once per model answer arrive in bursts), plus
                    # two timer intervals: settled costs stay in the lease until the timer
                    # writes them.
                    refill_horizon_ms=1000 + int(2000 * self.options.flush_seconds),
                ),
                kube=self.kube,
                store=self.store,
            )
        return self.accounts[key]

    def authenticate(self, request: web.Request, *, api_key: bool = False) -> RunTokenClaims:
        """The run token's claims: from `Authorization: Bearer`, or, for Anthropic's
        clients (`api_key`), from `x-api-key` when there is no bearer token."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if not token and api_key:
            token = request.headers.get("x-api-key", "").strip()
        if not token:
            where = "Authorization: Bearer <token>" + (" or x-api-key: <token>" if api_key else "")
            raise GatewayError(
                401, "authentication_error", f"a run token is required: {where}", "missing_token"
            )
        try:
            return verify_run_token(token, self.token_keys, int(time.time()))
        except InvalidRunToken as error:
            metrics.REFUSALS.labels(reason=f"token_{error.reason}").inc()
            raise GatewayError(401, "authentication_error", str(error), error.reason) from None

    @staticmethod
    def correlated(claims: RunTokenClaims) -> AbstractContextManager[None]:
        """Log lines of this call carry the run's uid, namespace, name and attempt."""
        return bind_correlation(
            claims.run_uid, namespace=claims.namespace, run=claims.run, attempt=str(claims.attempt)
        )

    # ------------------------------------------------------------------ routes

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        claims = self.authenticate(request)
        with self.correlated(claims):
            body = await read_json(request, self.options.max_body_bytes)
            chat = validate_chat_request(body, self.served)
            opened = await self.open_call(claims, chat.model)
            normalised = normalise_request(body)
            if claims.replay_of is not None:
                return await self._replay(opened, chat, normalised)
            reservation = await self.reserve(opened, chat)
            if chat.stream:
                return await self.stream(
                    request,
                    reservation,
                    chat,
                    ChatEncoder(chat.model, chat.include_usage),
                    normalised=normalised,
                    payload=lambda answer: _json_bytes(answer.completion(chat.model)),
                )
            answered = await self.complete(reservation, chat)
            payload = _json_bytes({**answered.completion.body, "model": chat.model})
            self.record_transcript(opened.call, normalised, payload)
            overhead = time.perf_counter() - started - answered.upstream_seconds
            metrics.GATEWAY_OVERHEAD.observe(overhead)
            return web.Response(body=payload, content_type="application/json")

    async def models(self, request: web.Request) -> web.Response:
        claims = self.authenticate(request)
        account = self.account(claims.namespace, claims.budget)
        await self._refresh_budget(account, claims)
        allowed = [name for name in sorted(self.served) if _model_allowed(account, name)]
        data = [
            {
                "id": name,
                "object": "model",
                "owned_by": "smartspec",
                STRUCTURED_OUTPUT_FIELD: name in self.structured,
            }
            for name in allowed
        ]
        return web.json_response({"object": "list", "data": data})

    # ------------------------------------------------------------------ steps

    async def _refresh_budget(self, account: LeaseAccount, claims: RunTokenClaims) -> None:
        try:
            outcome = await self.spending.open_budget(account)
        except BudgetUnavailableError as error:
            raise fail_closed(error) from None
        if isinstance(outcome, Refused):
            raise await self._refused(claims, outcome)

    async def _refused(self, claims: RunTokenClaims, outcome: Refused) -> GatewayError:
        """The refusal's answer, once it is on the run (an agent's own handling of the
        error is not trusted to report it; CORE-004 "Agent backend")."""
        await self.runs.record_refusal(claims, outcome.refusal)
        return refused(outcome.refusal)

    async def open_call(self, claims: RunTokenClaims, model: str) -> OpenedCall:
        """The run is active, the budget readable and its model policy allows `model`
        (else the refusal, as a GatewayError)."""
        run = await self.runs.active_run(claims)
        account = self.account(claims.namespace, claims.budget)
        call = _attribution(claims)
        await self._refresh_budget(account, claims)
        outcome = self.spending.check_model(account, call, model)
        if outcome is not None:
            raise await self._refused(claims, outcome)
        return OpenedCall(claims, run, account, call)

    def _price(self, model: str) -> ModelPrice:
        try:
            return self.prices.price(model)
        except UnknownModelPrice as error:
            metrics.REFUSALS.labels(reason="model_not_priced").inc()
            raise GatewayError(
                400, "invalid_request_error", str(error), "model_not_priced"
            ) from None

    async def reserve(self, opened: OpenedCall, chat: ChatRequest) -> Reservation:
        """Price the call and hold its worst case, clamping max_tokens or refusing."""
        price = self._price(chat.model)
        try:
            outcome = await self.spending.reserve(
                opened.account,
                opened.call,
                RunLimits.of(opened.run),
                price=price,
                model=chat.model,
                prompt_token_bound=chat.prompt_token_bound,
                max_tokens=chat.max_tokens,
            )
        except BudgetUnavailableError as error:
            raise fail_closed(error) from None
        if isinstance(outcome, Refused):
            raise await self._refused(opened.claims, outcome)
        return Reservation(opened, price, outcome)

    async def complete(self, reservation: Reservation, chat: ChatRequest) -> Answered:
        """Call upstream and settle by the answer's usage; on failure release the hold and
        raise the 502/429/504 that says nothing was charged."""
        opened, granted = reservation.opened, reservation.granted
        upstream_started = time.perf_counter()
        try:
            result = await self._call_upstream(
                opened.run, opened.claims, chat.upstream(granted.max_tokens)
            )
        except UpstreamError as error:
            self.spending.release(opened.account, granted.hold, error.kind)
            raise _upstream_failed(chat.model, error) from None
        upstream_seconds = time.perf_counter() - upstream_started
        usage = (result.prompt_tokens, result.completion_tokens)
        charge = self.spending.settle(
            opened.account,
            granted.hold,
            reservation.price,
            usage if result.usage_reported else None,
        )
        return Answered(result, charge, upstream_seconds)

    async def _call_upstream(
        self, run: dict[str, Any], claims: RunTokenClaims, upstream: dict[str, Any]
    ) -> Completion:
        local = self.config.local_routes.get(upstream["model"])
        if local is not None:
            endpoint = local_endpoint(run, claims)
            return await complete_local(local, endpoint, upstream, self.config.num_retries)
        return await complete(
            self.router,
            upstream,
            openai_compatible=upstream["model"] in self.config.openai_compatible_routes,
        )

    async def stream(
        self,
        request: web.Request,
        reservation: Reservation,
        chat: ChatRequest,
        encoder: StreamEncoder,
        *,
        normalised: Mapping[str, Any],
        payload: Callable[[StreamedAnswer], bytes],
    ) -> web.StreamResponse:
        """Relay a streamed answer in the client's API (`encoder`), then settle it: by the
        usage it carried, else by the conservative count of what it delivered (it ended
        without usage, broke, or the client left, which closes the upstream request). A
        whole answer is recorded as `payload` makes it, under `normalised`."""
        opened, granted = reservation.opened, reservation.granted
        try:
            upstream = await self._open_stream(
                opened.run, opened.claims, chat.upstream(granted.max_tokens)
            )
        except UpstreamError as error:
            self.spending.release(opened.account, granted.hold, error.kind)
            raise _upstream_failed(chat.model, error) from None
        answer = StreamedAnswer()
        end = StreamEnd.CLIENT_GONE  # until the relay says otherwise (a cancelled handler)
        response = web.StreamResponse(headers=SSE_HEADERS)
        try:
            end = await relay(request, response, upstream, answer, encoder)
        finally:
            self.spending.settle_stream(
                opened.account,
                granted.hold,
                reservation.price,
                answer.usage,
                streamed=answer.streamed,
                end=end,
            )
            await _closed(upstream)
        if end is StreamEnd.UPSTREAM_BROKE:
            metrics.UPSTREAM_ERRORS.labels(model=chat.model, error="stream_broken").inc()
            log.warning("Upstream stream broke", model=chat.model)
        if answer.finish_reason is not None:  # a whole answer: replayable
            self.record_transcript(opened.call, normalised, payload(answer))
        return response

    async def _open_stream(
        self, run: dict[str, Any], claims: RunTokenClaims, upstream: dict[str, Any]
    ) -> ChunkStream:
        local = self.config.local_routes.get(upstream["model"])
        if local is not None:
            endpoint = local_endpoint(run, claims)
            return await open_local_stream(local, endpoint, upstream, self.config.num_retries)
        return await open_stream(
            self.router,
            upstream,
            openai_compatible=upstream["model"] in self.config.openai_compatible_routes,
        )

    async def recorded(self, opened: OpenedCall, normalised: Mapping[str, Any]) -> bytes:
        """The answer recorded for this request (a replay); 404 when there is none, and
        never a live call."""
        try:
            return await load_transcript(self.store, opened.claims.namespace, normalised)
        except TranscriptMissingError as error:
            metrics.REFUSALS.labels(reason="transcript_missing").inc()
            raise GatewayError(
                404,
                "not_found_error",
                f"replay of {opened.claims.replay_of}: {error}; no live call was made",
                "transcript_not_found",
            ) from None

    async def _replay(
        self, opened: OpenedCall, chat: ChatRequest, normalised: Mapping[str, Any]
    ) -> web.Response:
        payload = await self.recorded(opened, normalised)
        document = json.loads(payload) if payload else {}
        usage = document.get("usage") or {}
        tokens = (int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
        self.spending.record_replay(opened.account, opened.call, chat.model, tokens)
        if chat.stream:
            return web.Response(body=replay_body(document, chat.include_usage), headers=SSE_HEADERS)
        return web.Response(body=payload, content_type="application/json")

    def record_transcript(
        self, call: Attribution, normalised: Mapping[str, Any], payload: bytes
    ) -> None:
        """Store the exchange in the background: the answer is not held up by it."""
        self._spawn(self._record_transcript(call, normalised, payload))

    async def _record_transcript(
        self, call: Attribution, normalised: Mapping[str, Any], payload: bytes
    ) -> None:
        try:
            await store_transcript(self.store, call.namespace, normalised, payload, call.to_wire())
        except Exception as error:  # logged, not raised: the answer was already given
            log.error("Could not store transcript", call_id=call.call_id, error=str(error))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # ------------------------------------------------------------------ lifecycle

    async def flush_loop(self) -> None:
        """Write back settled costs and ledger entries; renew or give back idle leases."""
        while True:
            await asyncio.sleep(self.options.flush_seconds)
            await self.flush_all(final=False)

    async def flush_all(self, *, final: bool) -> None:
        for account in list(self.accounts.values()):
            if not (final or account.needs_sync()) or (account.lock.locked() and not final):
                continue
            idle = time.monotonic() - account.last_activity > account.settings.idle_release_seconds
            try:
                async with account.lock:
                    if final or account.needs_sync():
                        release = final or idle
                        await account.sync(
                            0 if release else account.spare_wanted(0), release_idle=release
                        )
                metrics.BUDGET_LEASE.set(sum(a.held for a in self.accounts.values()))
                await account.flush_run_usage()
            except (BudgetUnavailableError, KubeError) as error:
                log.warning(
                    "Budget write-back failed; will retry",
                    namespace=account.namespace,
                    budget=account.budget,
                    error=str(error),
                )
        self.runs.forget_stale()

    async def close(self) -> None:
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)
        await self.flush_all(final=True)
        await self.store.aclose()
        await self.kube.close()
        await close_transports()


def _json_bytes(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _attribution(claims: RunTokenClaims) -> Attribution:
    """One call's attribution: the token's claims and a new call id."""
    return Attribution(
        namespace=claims.namespace,
        run=claims.run,
        run_uid=claims.run_uid,
        attempt=claims.attempt,
        spec_revision=claims.spec_revision,
        call_id=uuid.uuid4().hex,
    )


async def _closed(upstream: ChunkStream) -> None:
    """Close an upstream stream; a failure to close is logged, never raised over the answer."""
    try:
        await upstream.close()
    except Exception as error:  # the call is settled; a close that fails changes nothing
        log.warning("Could not close an upstream stream", error=str(error))


def _upstream_failed(model: str, error: UpstreamError) -> GatewayError:
    """Every route failed before an answer: the hold was released, nothing is charged."""
    metrics.UPSTREAM_ERRORS.labels(model=model, error=error.kind).inc()
    log.warning("Upstream call failed", model=model, error=error.kind)
    status = 429 if error.kind == "rate_limited" else error.status
    return GatewayError(
        status,
        "upstream_error",
        f"every route for {model} failed ({error.kind}); nothing was charged: {error.message}",
        error.kind,
    )


def _model_allowed(account: LeaseAccount, model: str) -> bool:
    return account.spec is not None and model_allowed(account.spec.models, model)


@web.middleware
async def _errors_and_metrics(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    route = (
        request.match_info.route.resource.canonical
        if request.match_info.route.resource
        else "unknown"
    )
    try:
        response = await handler(request)
    except GatewayError as error:
        response = error.response()
    except web.HTTPException as error:
        response = web.json_response(
            {
                "error": {
                    "message": error.reason,
                    "type": "invalid_request_error",
                    "code": str(error.status),
                }
            },
            status=error.status,
        )
    except Exception:
        log.exception("Unhandled gateway error", route=route)
        response = GatewayError(
            500, "server_error", "internal gateway error", "internal"
        ).response()
    metrics.GATEWAY_REQUESTS.labels(route=route, status=f"{response.status // 100}xx").inc()
    metrics.GATEWAY_LATENCY.labels(route=route).observe(time.perf_counter() - started)
    return response


async def _responses_not_served(_: web.Request) -> web.Response:
    """The OpenAI Responses API is not served (CORE-003, "Anthropic Messages")."""
    raise GatewayError(
        404,
        "invalid_request_error",
        "the Responses API (/v1/responses) is not served by this gateway: its state lives on "
        "the server (previous_response_id, stored responses) and its built-in tools run there; "
        "use POST /v1/chat/completions (OpenAI clients) or POST /v1/messages (Anthropic clients)",
        "endpoint_not_served",
    )


def build_app(gateway: Gateway) -> web.Application:
    """The aiohttp application with every route and the flush loop's lifecycle."""
    app = web.Application(
        middlewares=[_errors_and_metrics], client_max_size=gateway.options.max_body_bytes
    )
    app.router.add_post("/v1/chat/completions", gateway.chat_completions)
    app.router.add_post("/v1/messages", anthropic_messages.messages_handler(gateway))
    app.router.add_get("/v1/models", gateway.models)
    app.router.add_route("*", "/v1/responses{rest:.*}", _responses_not_served)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        try:
            await gateway.kube.get("/version")
        except KubeError as error:
            return web.json_response({"status": "unavailable", "reason": str(error)}, status=503)
        return web.json_response({"status": "ready"})

    async def prometheus(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(gateway.flush_loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await gateway.close()

    app.cleanup_ctx.append(lifecycle)
    return app
