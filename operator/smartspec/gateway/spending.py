"""One model call's spending: grant, clamp or refuse it; hold its credits; settle or release.

Contract: specs/CORE-003-gateway-and-budgets.md, sections "Budget accounting", "Refusals"
and "Ledger".

The HTTP layer asks `reserve` for a call and gets a `Granted` (the hold and the max_tokens
to send upstream) or a `Refused` (a refusal already written to the ledger, the log and the
metrics), which it maps onto its answer; after the upstream call it `settle`s the hold with
what the answer reports (`settle_stream` for a streamed answer, however it ended), or
`release`s it. Every figure comes from smartspec.logic (the
arithmetic) and every write from smartspec.gateway.accounting (the lease books).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from smartspec.api.v1alpha1.creditbudget import EnforcementMode
from smartspec.gateway.accounting import (
    BudgetNotFoundError,
    BudgetUnavailableError,
    Hold,
    LeaseAccount,
    recently_synced,
)
from smartspec.logic.budget import model_allowed
from smartspec.logic.ledger import Attribution, EntryKind, LedgerDraft
from smartspec.logic.pricing import ModelPrice
from smartspec.logic.refusals import (
    CallNeed,
    Refusal,
    RunCap,
    binding_refusal,
    missing_budget_refusal,
    model_refusal,
    run_cap,
)
from smartspec.logic.spending import (
    Charge,
    Grant,
    SettledBy,
    Streamed,
    StreamEnd,
    call_need,
    charge_for,
    charge_for_stream,
    grant_within,
)
from smartspec.observability import metrics
from smartspec.observability.logs import get_logger

log = get_logger(__name__)

UNCAPPED = 1 << 62
"""The room of a run without a cap."""


@dataclass(frozen=True)
class RunLimits:
    """What a run sets for its own spending: its cap, and the credits its status records."""

    max_credits: int | None
    used_credits: int

    @classmethod
    def of(cls, run: Mapping[str, Any]) -> RunLimits:
        """Read from the GenerationRun object (spec.maxCredits, status.usage.credits)."""
        max_credits = (run.get("spec") or {}).get("maxCredits")
        used = ((run.get("status") or {}).get("usage") or {}).get("credits", 0)
        return cls(max_credits if isinstance(max_credits, int) else None, int(used))


@dataclass(frozen=True)
class Granted:
    """The call may go upstream with `max_tokens` (less than asked when it was clamped)."""

    hold: Hold
    max_tokens: int


@dataclass(frozen=True)
class Refused:
    """The call may not go upstream; the refusal is recorded everywhere it belongs."""

    refusal: Refusal


@dataclass
class Spending:
    """The decisions and records of this replica's calls, over its lease books."""

    replica: str
    spawn: Callable[[Coroutine[Any, Any, None]], None]
    """Runs a background task the process waits for at shutdown (lease top-ups)."""

    # ------------------------------------------------------------------ before the call

    async def open_budget(self, account: LeaseAccount) -> Refused | None:
        """Read the budget (cached); a missing one refuses, an unreadable one raises
        BudgetUnavailableError (the caller fails closed)."""
        try:
            await account.refresh()
        except BudgetNotFoundError:
            refusal = missing_budget_refusal(account.namespace, account.budget)
            # No budget, so no ledger to write to: the answer and the log line say it.
            log.warning("Call refused", code=refusal.code.value, reason=refusal.message)
            metrics.REFUSALS.labels(reason=refusal.code.value).inc()
            return Refused(refusal)
        return None

    def check_model(self, account: LeaseAccount, call: Attribution, model: str) -> Refused | None:
        """The budget's model policy: a refusal, recorded, when it does not allow `model`."""
        if account.spec is None or model_allowed(account.spec.models, model):
            return None
        refusal = model_refusal(account.namespace, account.budget, account.spec.models, model)
        return self._refuse(refusal, account, call, model)

    async def reserve(
        self,
        account: LeaseAccount,
        call: Attribution,
        limits: RunLimits,
        *,
        price: ModelPrice,
        model: str,
        prompt_token_bound: int,
        max_tokens: int,
    ) -> Granted | Refused:
        """Hold the worst case, clamping max_tokens to what the budget and run cap allow."""
        need = call_need(price, prompt_token_bound, max_tokens)
        room = min(account.unclaimed, self._run_room(account, call, limits))
        if not (account.releasing or account.tight) and room >= need.requested_credits:
            granted = self._hold(
                account, call, model, need, Grant(need.requested_credits, max_tokens)
            )
            if account.wants_refill():
                self.spawn(self._refill(account))
            return granted
        await self._wait_for_room(account, call, limits, need)
        room = min(account.available, self._run_room(account, call, limits))
        grant = grant_within(price, need, max_tokens, room)
        if grant is not None:
            if grant.max_tokens < max_tokens:
                log.info(
                    "Clamped max_tokens to the budget",
                    requested=max_tokens,
                    granted=grant.max_tokens,
                )
            return self._hold(account, call, model, need, grant)
        refusal = binding_refusal(
            f"{call.namespace}/{call.run}",
            self._run_cap(account, call, limits),
            account.budget_figures(),
            need,
        )
        return self._refuse(refusal, account, call, model, credits=need.requested_credits)

    # ------------------------------------------------------------------ after the call

    def settle(
        self, account: LeaseAccount, hold: Hold, price: ModelPrice, usage: tuple[int, int] | None
    ) -> Charge:
        """Charge what the answer reports (the held worst case when it reports nothing
        usable) and record it; the rest of the hold goes back to the lease."""
        charge = charge_for(price, _held(hold), hold.prompt_token_bound, usage)
        detail = f"reserved {hold.credits}"
        if usage is None:
            # Tokens were spent, how many is unknown: the worst case reserved is charged.
            detail += "; the answer reported no token usage: charged the reservation"
            self._unreported(hold, charge)
        self._charge(account, hold, charge, detail, outcome="ok")
        return charge

    def settle_stream(
        self,
        account: LeaseAccount,
        hold: Hold,
        price: ModelPrice,
        usage: tuple[int, int] | None,
        *,
        streamed: Streamed,
        end: StreamEnd,
    ) -> Charge:
        """Charge a streamed answer, however it ended: the usage it carried, else the
        conservative count of what it delivered (never 0, never above the hold)."""
        charge = charge_for_stream(
            price, _held(hold), hold.prompt_token_bound, usage, streamed=streamed, end=end
        )
        detail = f"reserved {hold.credits}; stream {end.value}"
        if charge.settled_by is not SettledBy.USAGE:
            detail += (
                f"; no token usage: charged the prompt's bound and {charge.completion_tokens} "
                f"completion tokens for {streamed.generated_bytes} bytes in "
                f"{streamed.generated_chunks} chunks"
            )
            self._unreported(hold, charge)
        self._charge(
            account, hold, charge, detail, outcome="ok" if end is StreamEnd.FINISHED else end.value
        )
        return charge

    def release(self, account: LeaseAccount, hold: Hold, reason: str) -> None:
        """The call failed before any answer: nothing is charged, the hold goes back."""
        account.release(hold.call_id)
        account.record(
            self._draft(
                "release", account, hold.call, hold.model, credits=hold.credits, detail=reason
            )
        )
        metrics.CREDITS.labels(action="released").inc(hold.credits)

    def record_replay(
        self, account: LeaseAccount, call: Attribution, model: str, usage: tuple[int, int]
    ) -> None:
        """A call answered from a transcript: recorded at 0 credits."""
        account.record(
            self._draft(
                "replay",
                account,
                call,
                model,
                credits=0,
                prompt_tokens=usage[0],
                completion_tokens=usage[1],
                detail=f"call {call.call_id} answered from a transcript",
            )
        )
        metrics.MODEL_CALLS.labels(model=model, outcome="replayed").inc()

    # ------------------------------------------------------------------ steps

    def _charge(
        self, account: LeaseAccount, hold: Hold, charge: Charge, detail: str, *, outcome: str
    ) -> None:
        """Move the hold to settled at `charge` and record the settle entry and metrics."""
        account.settle(hold.call_id, charge.credits, charge.prompt_tokens, charge.completion_tokens)
        account.record(
            self._draft(
                "settle",
                account,
                hold.call,
                hold.model,
                credits=charge.credits,
                prompt_tokens=charge.prompt_tokens,
                completion_tokens=charge.completion_tokens,
                detail=detail,
                settled_by=charge.settled_by,
            )
        )
        metrics.CREDITS.labels(action="settled").inc(charge.credits)
        metrics.MODEL_CALLS.labels(model=hold.model, outcome=outcome).inc()
        metrics.MODEL_TOKENS.labels(model=hold.model, direction="prompt").inc(charge.prompt_tokens)
        metrics.MODEL_TOKENS.labels(model=hold.model, direction="completion").inc(
            charge.completion_tokens
        )

    @staticmethod
    def _unreported(hold: Hold, charge: Charge) -> None:
        metrics.UNREPORTED_USAGE.labels(model=hold.model).inc()
        log.warning(
            "The answer reported no token usage",
            model=hold.model,
            credits=charge.credits,
            settled_by=charge.settled_by.value,
        )

    def _hold(
        self, account: LeaseAccount, call: Attribution, model: str, need: CallNeed, grant: Grant
    ) -> Granted:
        hold = Hold(
            call=call,
            model=model,
            credits=grant.credits,
            prompt_token_bound=need.prompt_token_bound,
            max_tokens=grant.max_tokens,
        )
        account.hold(hold)
        shadow_over = (
            account.spec is not None
            and account.spec.enforcement is EnforcementMode.SHADOW
            and account.budget_figures().over_limit
        )
        detail = "shadow: over limit" if shadow_over else ""
        account.record(
            self._draft("reserve", account, call, model, credits=grant.credits, detail=detail)
        )
        metrics.CREDITS.labels(action="reserved").inc(grant.credits)
        return Granted(hold, grant.max_tokens)

    def _refuse(
        self,
        refusal: Refusal,
        account: LeaseAccount,
        call: Attribution,
        model: str,
        *,
        credits: int = 0,
    ) -> Refused:
        """Record a refusal once: a ledger entry, a warning line and the metrics."""
        detail = f"{refusal.code.value} ({refusal.constraint.value}): {refusal}"
        account.record(self._draft("refuse", account, call, model, credits=0, detail=detail))
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
        return Refused(refusal)

    async def _wait_for_room(
        self, account: LeaseAccount, call: Attribution, limits: RunLimits, need: CallNeed
    ) -> None:
        """Wait for writes that grow the lease until this call has room, or cannot get it.

        A call asks for its worst case, or for what its run's cap leaves when that is less
        (it will be clamped to that): a cap that binds shrinks the call, it never stops the
        lease from covering it. Each write either makes room (some waiting call goes on: the
        oldest first, as they re-check in the order they came) or comes back short (tight);
        so this ends.
        """
        want = min(need.requested_credits, self._run_room(account, call, limits))
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
                await asyncio.shield(account.grow(want))
                want = min(want, self._run_room(account, call, limits))
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
        self, account: LeaseAccount, call: Attribution, limits: RunLimits
    ) -> RunCap | None:
        """The run's cap and what it committed: its recorded usage plus this replica's part."""
        per_run = account.spec.per_run_limit_credits if account.spec else None
        settled, held = account.run_committed(call.run, call.run_uid)
        return run_cap(
            limits.max_credits,
            per_run,
            account.budget,
            spent=limits.used_credits + settled,
            held=held,
        )

    def _run_room(self, account: LeaseAccount, call: Attribution, limits: RunLimits) -> int:
        """Credits the run may still commit under its cap (a large number when uncapped)."""
        cap = self._run_cap(account, call, limits)
        return UNCAPPED if cap is None else cap.room

    def _draft(
        self,
        kind: EntryKind,
        account: LeaseAccount,
        call: Attribution,
        model: str,
        *,
        credits: int,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        detail: str = "",
        settled_by: SettledBy | None = None,
    ) -> LedgerDraft:
        return LedgerDraft(
            kind=kind,
            at=datetime.now(UTC),
            namespace=account.namespace,
            budget=account.budget,
            holder=self.replica,
            credits=credits,
            call=call,
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            detail=detail,
            settled_by=settled_by,
        )


def _held(hold: Hold) -> Grant:
    """What a hold was granted: its credits and the max_tokens they were priced at."""
    return Grant(hold.credits, hold.max_tokens)
