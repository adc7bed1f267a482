"""The gateway's HTTP API: OpenAI-compatible chat completions, budgeted and recorded.

Contract: specs/CORE-003-gateway-and-budgets.md, sections "Protocol" and "Errors".

One chat completion: authenticate the run token → validate the request → check the run is
still active → check the budget's model policy → reserve the worst case (clamping
max_tokens to what is left, or refusing) → call upstream through litellm → settle the actual
cost (or release on failure) → record ledger entries and the transcript. Every refusal
happens before any provider is contacted and costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from smartspec.api.gateway import STRUCTURED_OUTPUT_FIELD
from smartspec.api.v1alpha1.creditbudget import EnforcementMode
from smartspec.gateway.accounting import (
    BudgetNotFoundError,
    BudgetUnavailableError,
    Hold,
    LeaseAccount,
    LeaseSettings,
    recently_synced,
)
from smartspec.gateway.config import GatewayConfig
from smartspec.gateway.router import (
    Completion,
    UpstreamError,
    build_router,
    close_transports,
    complete,
    complete_local,
)
from smartspec.gateway.single_flight import SingleFlight
from smartspec.gateway.transcripts import TranscriptMissingError, load_transcript, store_transcript
from smartspec.kube.client import KubeClient, KubeError, custom_object_path
from smartspec.logic.budget import model_allowed
from smartspec.logic.ledger import LedgerDraft
from smartspec.logic.pricing import (
    ModelPrice,
    PriceTable,
    UnknownModelPrice,
    affordable_completion_tokens,
    cost_credits,
)
from smartspec.logic.refusals import (
    CallNeed,
    Refusal,
    RunCap,
    budget_refusal,
    missing_budget_refusal,
    model_refusal,
    run_cap,
    run_cap_refusal,
)
from smartspec.logic.run_tokens import InvalidRunToken, RunTokenClaims, verify_run_token
from smartspec.observability import metrics
from smartspec.observability.logs import bind_correlation, get_logger
from smartspec.storage import ObjectStore

log = get_logger(__name__)

DEFAULT_MAX_TOKENS = 4096
MAX_TOKENS_LIMIT = 1_000_000
MIN_USEFUL_COMPLETION_TOKENS = 16
UNCAPPED = 1 << 62
"""The room of a run without a cap."""
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Only these Chat Completions parameters reach the Router. Everything else in a body would be
# passed to litellm as a keyword argument, where names such as `fallbacks`, `api_base` or
# `mock_response` steer routing past the budget's model policy. Left out on purpose: what
# changes the price (service_tier, prediction, audio, web_search_options), asks the provider
# to keep the data (store, metadata) or streams (stream_options).
_ACCEPTED_PARAMETERS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "n",
        "stream",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning_effort",
        "verbosity",
        "user",
        "safety_identifier",
        "prompt_cache_key",
    }
)
_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


class GatewayError(Exception):
    """An OpenAI-style error answer."""

    def __init__(
        self, status: int, error_type: str, message: str, code: str, **extra: object
    ) -> None:
        self.status = status
        self.error_type = error_type
        self.code = code
        self.extra = extra
        super().__init__(message)

    def response(self) -> web.Response:
        body = {
            "error": {
                "message": str(self),
                "type": self.error_type,
                "code": self.code,
                **self.extra,
            }
        }
        return web.json_response(body, status=self.status)


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
    runs: dict[tuple[str, str], tuple[float, dict[str, Any]]] = field(default_factory=dict)
    run_reads: SingleFlight[tuple[str, str], tuple[float, dict[str, Any]]] = field(
        default_factory=SingleFlight
    )
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    served: frozenset[str] = frozenset()
    structured: frozenset[str] = frozenset()
    """Models whose routes enforce a JSON schema given as response_format."""

    def __post_init__(self) -> None:
        self.router = self.router or build_router(self.config)
        self.served = frozenset(self.config.model_names)

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

    def authenticate(self, request: web.Request) -> RunTokenClaims:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise GatewayError(
                401,
                "authentication_error",
                "a run token is required: Authorization: Bearer <token>",
                "missing_token",
            )
        try:
            return verify_run_token(token.strip(), self.token_keys, int(time.time()))
        except InvalidRunToken as error:
            metrics.REFUSALS.labels(reason=f"token_{error.reason}").inc()
            raise GatewayError(401, "authentication_error", str(error), error.reason) from None

    async def active_run(self, claims: RunTokenClaims) -> dict[str, Any]:
        """The token's GenerationRun, if it may still call models (else 403)."""
        key = (claims.namespace, claims.run)
        cached = self.runs.get(key)
        ttl = self.options.run_cache_seconds
        if cached is None or time.monotonic() - cached[0] > ttl:
            # One read per run however many of its calls find the cache stale at once.
            cached = await asyncio.shield(self.run_reads.start(key, lambda: self._read_run(claims)))
        elif time.monotonic() - cached[0] > ttl / 2:
            # Read ahead, so that calls under steady load never wait for the read; a failed
            # read ahead is left for the next call past the TTL, which reads again.
            self.run_reads.start(key, lambda: self._read_run(claims))
        run = cached[1]
        problem = _inactive_reason(run, claims)
        if problem is not None:
            metrics.REFUSALS.labels(reason=problem[0]).inc()
            raise GatewayError(403, "permission_error", problem[1], problem[0])
        return run

    async def _read_run(self, claims: RunTokenClaims) -> tuple[float, dict[str, Any]]:
        path = custom_object_path("generationruns", claims.namespace, claims.run)
        try:
            body = await self.kube.get(path)
        except KubeError as error:
            if error.status == 404:
                raise GatewayError(
                    403,
                    "permission_error",
                    f"GenerationRun {claims.namespace}/{claims.run} does not exist",
                    "run_not_found",
                ) from None
            raise GatewayError(
                503, "service_unavailable", f"cannot read the run: {error}", "kube_unavailable"
            ) from None
        cached = (time.monotonic(), body)
        self.runs[(claims.namespace, claims.run)] = cached
        return cached

    # ------------------------------------------------------------------ routes

    async def chat_completions(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        upstream_seconds = 0.0
        claims = self.authenticate(request)
        with bind_correlation(
            claims.run_uid, namespace=claims.namespace, run=claims.run, attempt=str(claims.attempt)
        ):
            body = await _read_json(request, self.options.max_body_bytes)
            model, max_tokens = _validate_chat_request(body, self.served)
            run = await self.active_run(claims)
            account = self.account(claims.namespace, claims.budget)
            await self._refresh_budget(account)
            self._check_model_policy(account, claims, model)
            call_id = uuid.uuid4().hex
            if claims.replay_of is not None:
                return await self._replay(claims, account, body, model, call_id)
            price = self._price(model)
            prompt_bound = _prompt_token_bound(body)
            hold, granted_tokens = await self._reserve(
                account,
                claims,
                run,
                price=price,
                model=model,
                prompt_bound=prompt_bound,
                max_tokens=max_tokens,
                call_id=call_id,
            )
            upstream = {**body, "model": model, "max_tokens": granted_tokens}
            upstream.pop("max_completion_tokens", None)
            upstream_started = time.perf_counter()
            try:
                local = self.config.local_routes.get(model)
                if local is not None:
                    endpoint = _local_endpoint(run, claims)
                    result = await complete_local(
                        local, endpoint, upstream, self.config.num_retries
                    )
                else:
                    result = await complete(
                        self.router,
                        upstream,
                        openai_compatible=model in self.config.openai_compatible_routes,
                    )
            except UpstreamError as error:
                upstream_seconds = time.perf_counter() - upstream_started
                account.release(call_id)
                account.record(self._draft("release", claims, account, hold, detail=error.kind))
                metrics.CREDITS.labels(action="released").inc(hold.credits)
                metrics.UPSTREAM_ERRORS.labels(model=model, error=error.kind).inc()
                log.warning("Upstream call failed", model=model, error=error.kind)
                status = 429 if error.kind == "rate_limited" else error.status
                raise GatewayError(
                    status,
                    "upstream_error",
                    f"every route for {model} failed ({error.kind}); nothing was charged: "
                    f"{error.message}",
                    error.kind,
                ) from None
            upstream_seconds = time.perf_counter() - upstream_started
            self._settle(
                account, claims, hold, price, result, reserved_tokens=(prompt_bound, granted_tokens)
            )
            answer = {**result.body, "model": model}
            payload = json.dumps(answer, separators=(",", ":")).encode()
            self._spawn(self._record_transcript(claims, body, payload, call_id))
            metrics.GATEWAY_OVERHEAD.observe(time.perf_counter() - started - upstream_seconds)
            return web.Response(body=payload, content_type="application/json")

    def _settle(
        self,
        account: LeaseAccount,
        claims: RunTokenClaims,
        hold: Hold,
        price: ModelPrice,
        result: Completion,
        *,
        reserved_tokens: tuple[int, int],
    ) -> None:
        """Charge what the answer reports, and record it; the reservation's rest goes back."""
        model = hold.model
        prompt_tokens, completion_tokens = result.prompt_tokens, result.completion_tokens
        detail = f"reserved {hold.credits}"
        if result.usage_reported:
            credits = cost_credits(price, prompt_tokens, completion_tokens)
        else:
            # Tokens were spent, how many is unknown: charge the worst case reserved.
            credits = hold.credits
            prompt_tokens, completion_tokens = reserved_tokens
            detail += "; the answer reported no token usage: charged the reservation"
            metrics.UNREPORTED_USAGE.labels(model=model).inc()
            log.warning("The answer reported no token usage", model=model, credits=credits)
        account.settle(hold.call_id, credits, prompt_tokens, completion_tokens)
        account.record(
            self._draft(
                "settle",
                claims,
                account,
                hold,
                credits=credits,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                detail=detail,
            )
        )
        metrics.CREDITS.labels(action="settled").inc(credits)
        metrics.MODEL_CALLS.labels(model=model, outcome="ok").inc()
        metrics.MODEL_TOKENS.labels(model=model, direction="prompt").inc(prompt_tokens)
        metrics.MODEL_TOKENS.labels(model=model, direction="completion").inc(completion_tokens)

    async def models(self, request: web.Request) -> web.Response:
        claims = self.authenticate(request)
        account = self.account(claims.namespace, claims.budget)
        await self._refresh_budget(account)
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

    async def _refresh_budget(self, account: LeaseAccount) -> None:
        try:
            await account.refresh()
        except BudgetNotFoundError:
            refusal = missing_budget_refusal(account.namespace, account.budget)
            # No budget, so no ledger to write to: the answer and the log line say it.
            log.warning("Call refused", code=refusal.code.value, reason=refusal.message)
            metrics.REFUSALS.labels(reason=refusal.code.value).inc()
            raise GatewayError(
                refusal.http_status,
                refusal.error_type,
                refusal.message,
                refusal.code.value,
                constraint=refusal.constraint.value,
                **refusal.figures,
            ) from None
        except BudgetUnavailableError as error:
            raise _fail_closed(error) from None

    def _check_model_policy(
        self, account: LeaseAccount, claims: RunTokenClaims, model: str
    ) -> None:
        if account.spec is not None and not model_allowed(account.spec.models, model):
            refusal = model_refusal(account.namespace, account.budget, account.spec.models, model)
            raise self._refuse(refusal, claims, account, model)

    def _price(self, model: str) -> ModelPrice:
        try:
            return self.prices.price(model)
        except UnknownModelPrice as error:
            metrics.REFUSALS.labels(reason="model_not_priced").inc()
            raise GatewayError(
                400, "invalid_request_error", str(error), "model_not_priced"
            ) from None

    async def _reserve(
        self,
        account: LeaseAccount,
        claims: RunTokenClaims,
        run: dict[str, Any],
        *,
        price: ModelPrice,
        model: str,
        prompt_bound: int,
        max_tokens: int,
        call_id: str,
    ) -> tuple[Hold, int]:
        """Hold the worst case, clamping max_tokens to what the budget and run cap allow."""
        need = CallNeed(
            requested_credits=cost_credits(price, prompt_bound, max_tokens),
            required_credits=cost_credits(
                price, prompt_bound, min(max_tokens, MIN_USEFUL_COMPLETION_TOKENS)
            ),
            min_completion_tokens=min(max_tokens, MIN_USEFUL_COMPLETION_TOKENS),
            prompt_token_bound=prompt_bound,
        )
        requested = need.requested_credits
        # Room that calls waiting for a write asked for is theirs: taking it here would send
        # each of them back for another write.
        free = account.available - account.waiting_credits
        fits = min(free, self._run_room(account, claims, run)) >= requested
        if not (account.releasing or account.tight) and fits:
            hold = self._hold(account, claims, model, requested, call_id)
            if account.wants_refill():
                self._spawn(self._refill(account))
            return hold, max_tokens
        await self._wait_for_room(account, claims, run, need)
        room = min(account.available, self._run_room(account, claims, run))
        if room >= requested:
            return self._hold(account, claims, model, requested, call_id), max_tokens
        affordable = min(max_tokens, affordable_completion_tokens(price, prompt_bound, room))
        if affordable >= need.min_completion_tokens:
            credits = cost_credits(price, prompt_bound, affordable)
            log.info("Clamped max_tokens to the budget", requested=max_tokens, granted=affordable)
            return self._hold(account, claims, model, credits, call_id), affordable
        cap = self._run_cap(account, claims, run)
        if cap is not None and cap.room < need.required_credits:
            refusal = run_cap_refusal(f"{claims.namespace}/{claims.run}", cap, need)
        else:
            refusal = budget_refusal(account.budget_figures(), need)
        raise self._refuse(refusal, claims, account, model, credits=requested)

    def _refuse(
        self,
        refusal: Refusal,
        claims: RunTokenClaims,
        account: LeaseAccount,
        model: str,
        *,
        credits: int = 0,
    ) -> GatewayError:
        """Record a refusal once (ledger entry, warning, metrics) and build its answer."""
        detail = f"{refusal.code.value} ({refusal.constraint.value}): {refusal}"
        account.record(self._draft("refuse", claims, account, None, model=model, detail=detail))
        log.warning(
            "Call refused",
            code=refusal.code.value,
            constraint=refusal.constraint.value,
            model=model,
            budget=account.budget,
            reason=refusal.message,
            **refusal.figures,
        )
        metrics.REFUSALS.labels(reason=refusal.code.value).inc()
        if credits:
            metrics.CREDITS.labels(action="refused").inc(credits)
        return GatewayError(
            refusal.http_status,
            refusal.error_type,
            refusal.message,
            refusal.code.value,
            constraint=refusal.constraint.value,
            **refusal.figures,
        )

    async def _wait_for_room(
        self, account: LeaseAccount, claims: RunTokenClaims, run: dict[str, Any], need: CallNeed
    ) -> None:
        """Wait for writes that grow the lease until this call has room, or cannot get it.

        A call asks for its worst case, or for what its run's cap leaves when that is less
        (it will be clamped to that): a cap that binds shrinks the call, it never stops the
        lease from covering it. Each write either makes room (some waiting call goes on: the
        oldest first, as they re-check in the order they came) or comes back short (tight);
        so this ends.
        """
        want = min(need.requested_credits, self._run_room(account, claims, run))
        if want < need.required_credits:
            return  # the run's cap binds: no lease write helps
        with account.waiting_for(want):
            while True:
                if (
                    account.tight
                    and recently_synced(account)
                    and account.budget_figures().remaining_credits < need.required_credits
                ):
                    return  # near exhaustion and just written: decide on what is known
                try:
                    await asyncio.shield(account.grow(want))
                except BudgetUnavailableError as error:
                    raise _fail_closed(error) from None
                want = min(want, self._run_room(account, claims, run))
                if account.tight or account.available >= want or want < need.required_credits:
                    return
                # Calls that came in during the write took its room first: ask again.

    async def _refill(self, account: LeaseAccount) -> None:
        """Top up a lease running low, so that calls do not wait for a write."""
        try:
            await asyncio.shield(account.grow(0))
        except BudgetUnavailableError as error:
            # Calls that find no room write themselves and fail closed if this persists.
            log.warning("Lease top-up failed", budget=account.budget, error=str(error))

    def _run_cap(
        self, account: LeaseAccount, claims: RunTokenClaims, run: dict[str, Any]
    ) -> RunCap | None:
        """The run's cap and what it committed: its recorded usage plus this replica's part."""
        max_credits = (run.get("spec") or {}).get("maxCredits")
        per_run = account.spec.per_run_limit_credits if account.spec else None
        used = int(((run.get("status") or {}).get("usage") or {}).get("credits", 0))
        settled, held = account.run_committed(claims.run, claims.run_uid)
        return run_cap(
            max_credits if isinstance(max_credits, int) else None,
            per_run,
            account.budget,
            spent=used + settled,
            held=held,
        )

    def _run_room(self, account: LeaseAccount, claims: RunTokenClaims, run: dict[str, Any]) -> int:
        """Credits the run may still commit under its cap (a large number when uncapped)."""
        cap = self._run_cap(account, claims, run)
        return UNCAPPED if cap is None else cap.room

    def _hold(
        self, account: LeaseAccount, claims: RunTokenClaims, model: str, credits: int, call_id: str
    ) -> Hold:
        hold = Hold(
            call_id=call_id,
            credits=credits,
            run=claims.run,
            run_uid=claims.run_uid,
            attempt=claims.attempt,
            spec_revision=claims.spec_revision,
            model=model,
        )
        account.hold(hold)
        shadow_over = (
            account.spec is not None
            and account.spec.enforcement is EnforcementMode.SHADOW
            and account.budget_figures().over_limit
        )
        account.record(
            self._draft(
                "reserve", claims, account, hold, detail="shadow: over limit" if shadow_over else ""
            )
        )
        metrics.CREDITS.labels(action="reserved").inc(credits)
        return hold

    def _draft(
        self,
        kind: Any,
        claims: RunTokenClaims,
        account: LeaseAccount,
        hold: Hold | None,
        *,
        credits: int | None = None,
        model: str | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        detail: str = "",
    ) -> LedgerDraft:
        return LedgerDraft(
            kind=kind,
            at=datetime.now(UTC),
            namespace=claims.namespace,
            budget=account.budget,
            holder=self.options.replica,
            credits=(hold.credits if hold else 0) if credits is None else credits,
            run=claims.run,
            run_uid=claims.run_uid,
            attempt=claims.attempt,
            spec_revision=claims.spec_revision,
            call_id=hold.call_id if hold else None,
            model=hold.model if hold else model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            detail=detail,
        )

    async def _replay(
        self,
        claims: RunTokenClaims,
        account: LeaseAccount,
        body: dict[str, Any],
        model: str,
        call_id: str,
    ) -> web.Response:
        try:
            payload = await load_transcript(self.store, claims.namespace, body)
        except TranscriptMissingError as error:
            metrics.REFUSALS.labels(reason="transcript_missing").inc()
            raise GatewayError(
                404,
                "not_found_error",
                f"replay of {claims.replay_of}: {error}; no live call was made",
                "transcript_not_found",
            ) from None
        usage = (json.loads(payload).get("usage") or {}) if payload else {}
        account.record(
            self._draft(
                "replay",
                claims,
                account,
                None,
                credits=0,
                model=model,
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                detail=f"call {call_id} answered from a transcript",
            )
        )
        metrics.MODEL_CALLS.labels(model=model, outcome="replayed").inc()
        return web.Response(body=payload, content_type="application/json")

    async def _record_transcript(
        self, claims: RunTokenClaims, body: dict[str, Any], payload: bytes, call_id: str
    ) -> None:
        attribution = {
            "namespace": claims.namespace,
            "run": claims.run,
            "runUid": claims.run_uid,
            "attempt": claims.attempt,
            "specRevision": claims.spec_revision,
            "callId": call_id,
        }
        try:
            await store_transcript(self.store, claims.namespace, body, payload, attribution)
        except Exception as error:  # logged, not raised: the answer was already given
            log.error("Could not store transcript", call_id=call_id, error=str(error))

    def _spawn(self, coroutine: Awaitable[None]) -> None:
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
        # Forget runs not asked about for a minute (finished runs, mostly).
        stale = [key for key, (read_at, _) in self.runs.items() if time.monotonic() - read_at > 60]
        for key in stale:
            self.runs.pop(key, None)

    async def close(self) -> None:
        if self.background:
            await asyncio.gather(*self.background, return_exceptions=True)
        await self.flush_all(final=True)
        await self.store.aclose()
        await self.kube.close()
        await close_transports()


def _local_endpoint(run: dict[str, Any], claims: RunTokenClaims) -> str:
    """The model server of the token's attempt, as the operator recorded it on the run."""
    attempts: list[dict[str, Any]] = (run.get("status") or {}).get("attempts") or []
    current: dict[str, Any] = next((a for a in attempts if a.get("number") == claims.attempt), {})
    endpoint = current.get("modelEndpoint")
    if not endpoint:
        # Raised as an upstream failure so the held reservation is released.
        raise UpstreamError(
            "local_model_not_ready",
            503,
            f"attempt {claims.attempt} of {claims.run} has no local model server yet",
        )
    return str(endpoint)


def _fail_closed(error: BudgetUnavailableError) -> GatewayError:
    """The budget cannot be read or written: refuse rather than spend blind."""
    metrics.REFUSALS.labels(reason="budget_unavailable").inc()
    return GatewayError(
        503, "budget_unavailable", f"{error}; refusing the call (fail closed)", "budget_unavailable"
    )


def _inactive_reason(run: dict[str, Any], claims: RunTokenClaims) -> tuple[str, str] | None:
    """Why this run may not call models now (code, message), or None when it may."""
    metadata, spec = run.get("metadata") or {}, run.get("spec") or {}
    status = run.get("status") or {}
    name = f"{claims.namespace}/{claims.run}"
    attempt = status.get("attempt")
    checks = [
        (
            metadata.get("uid") != claims.run_uid,
            "run_replaced",
            f"the token is for an earlier GenerationRun named {name}",
        ),
        (bool(metadata.get("deletionTimestamp")), "run_deleted", f"{name} is being deleted"),
        (bool(spec.get("suspend")), "run_suspended", f"GenerationRun {name} is suspended"),
        (
            status.get("phase") in _TERMINAL_PHASES,
            "run_finished",
            f"GenerationRun {name} has finished ({status.get('phase')})",
        ),
        (
            isinstance(attempt, int) and attempt != claims.attempt,
            "attempt_mismatch",
            f"the token is for attempt {claims.attempt}; {name} is on attempt {attempt}",
        ),
        (
            (spec.get("replayOf") or {}).get("name") != claims.replay_of,
            "replay_mismatch",
            f"the token's replay source does not match GenerationRun {name}",
        ),
    ]
    return next(((code, message) for failed, code, message in checks if failed), None)


def _model_allowed(account: LeaseAccount, model: str) -> bool:
    return account.spec is not None and model_allowed(account.spec.models, model)


async def _read_json(request: web.Request, limit: int) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > limit:
        raise GatewayError(
            413, "invalid_request_error", f"request body over {limit} bytes", "body_too_large"
        )
    raw = await request.content.read(limit + 1)
    if len(raw) > limit:
        raise GatewayError(
            413, "invalid_request_error", f"request body over {limit} bytes", "body_too_large"
        )
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GatewayError(
            400, "invalid_request_error", f"request body is not JSON: {error}", "invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise GatewayError(
            400, "invalid_request_error", "request body must be a JSON object", "invalid_json"
        )
    return body


def _bad(message: str, param: str, *, code: str = "invalid_request") -> GatewayError:
    """A 400 about one field of the request body."""
    return GatewayError(400, "invalid_request_error", message, code, param=param)


def _validate_chat_request(body: dict[str, Any], served: frozenset[str]) -> tuple[str, int]:
    unsupported = sorted(set(body) - _ACCEPTED_PARAMETERS)
    if unsupported:
        raise _bad(
            f"unsupported parameter(s) {', '.join(unsupported)}; this gateway accepts "
            f"{', '.join(sorted(_ACCEPTED_PARAMETERS))}",
            unsupported[0],
            code="unsupported_parameter",
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model is required and must be a string", "model")
    if model not in served:
        raise GatewayError(
            404,
            "invalid_request_error",
            f"model {model} is not served by this gateway",
            "model_not_found",
            param="model",
        )
    if body.get("stream"):
        raise _bad("streaming is not supported by this gateway; send stream: false", "stream")
    if body.get("n", 1) != 1:
        raise _bad("n must be 1", "n")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise _bad(f"messages[{index}] needs a role of {sorted(_ROLES)}", f"messages[{index}]")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(
                f"messages[{index}].content must be a string or a list", f"messages[{index}]"
            )
    _validate_tools(body.get("tools"))
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens", DEFAULT_MAX_TOKENS))
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or not (1 <= max_tokens <= MAX_TOKENS_LIMIT)
    ):
        raise _bad(f"max_tokens must be an integer from 1 to {MAX_TOKENS_LIMIT}", "max_tokens")
    return model, max_tokens


def _validate_tools(tools: object) -> None:
    """Function tools only: other tool types make litellm or the provider act on their own
    (litellm's MCP tools would have the gateway connect to a server the request names)."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _bad("tools must be a list", "tools")
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        function = tool.get("function") if isinstance(tool, dict) else None
        if kind != "function" or not isinstance(function, dict):
            raise _bad(
                f"tools[{index}] must be a function tool ({{'type': 'function', 'function': "
                f"{{...}}}}); type {kind!r} is not supported",
                f"tools[{index}]",
                code="unsupported_tool",
            )
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise _bad(
                f"tools[{index}].function.name is required and must be a string", f"tools[{index}]"
            )


def _prompt_token_bound(body: dict[str, Any]) -> int:
    """An upper bound of the prompt's tokens that holds for byte-level BPE tokenizers.

    Such a tokenizer never makes more tokens than the text has UTF-8 bytes; add each
    message's framing (role and separators) and the tool definitions. It overestimates
    (about four times for English), which only makes reservations conservative: the
    settlement charges what the provider reports.
    """
    total = 16
    for message in body.get("messages", []):
        total += 8 + len(json.dumps(message.get("content"), ensure_ascii=False).encode())
        total += len(str(message.get("name", "")).encode())
    if body.get("tools"):
        total += len(json.dumps(body["tools"], ensure_ascii=False).encode())
    return total


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


def build_app(gateway: Gateway) -> web.Application:
    """The aiohttp application with every route and the flush loop's lifecycle."""
    app = web.Application(
        middlewares=[_errors_and_metrics], client_max_size=gateway.options.max_body_bytes
    )
    app.router.add_post("/v1/chat/completions", gateway.chat_completions)
    app.router.add_get("/v1/models", gateway.models)

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
