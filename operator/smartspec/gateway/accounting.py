"""Per-replica budget accounting: local reservations against a lease, batched CAS writes.

Contract: specs/CORE-003-gateway-and-budgets.md, sections "Budget accounting" and "Ledger".

A call reserves its worst-case cost from this replica's lease in memory (no I/O when the
lease has room). A sync on a timer does one compare-and-swap on the CreditBudget status:
settled costs move into spentCredits, the lease is resized, and the buffered ledger entries
are appended as one segment written to S3 first. Calls that find no room, and top-ups ahead
of need, share one resize-only write (`grow`) that only grows the lease.
The arithmetic is `smartspec.logic.budget.sync_lease`; this module only does the I/O around
it and keeps the local books.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from smartspec.api.v1alpha1.creditbudget import (
    CreditBudget,
    CreditBudgetSpec,
    CreditBudgetStatus,
    LedgerHead,
)
from smartspec.gateway.single_flight import SingleFlight
from smartspec.kube.client import ConflictError, KubeClient, KubeError, custom_object_path
from smartspec.logic.budget import (
    DemandWindow,
    LeaseRequest,
    LeaseResult,
    credits_left,
    describe_period,
    sync_lease,
)
from smartspec.logic.canonical import canonical_json
from smartspec.logic.ledger import Attribution, LedgerDraft, chain_segment, segment_key
from smartspec.logic.refusals import BudgetFigures
from smartspec.observability import metrics
from smartspec.observability.logs import get_logger
from smartspec.storage import ObjectStore, StorageError

MAX_CAS_ATTEMPTS = 40
# Keys of the account's single flights (one budget per account, so one of each).
_READ = "read"
_GROW = "grow"
# Budget state this fresh is trusted for a refusal without another write: at exhaustion,
# every queued call re-syncing would be a storm of writes that cannot succeed anyway.
FRESH_ENOUGH_SECONDS = 0.1
log = get_logger(__name__)


class BudgetUnavailableError(RuntimeError):
    """The budget could not be read or written: the gateway fails closed."""


class BudgetNotFoundError(BudgetUnavailableError):
    """The CreditBudget a run names does not exist."""


@dataclass
class Hold:
    """One call's reservation against the lease."""

    call: Attribution
    model: str
    credits: int
    prompt_token_bound: int = 0
    max_tokens: int = 0
    """The token bounds `credits` was priced at (charged when the answer reports none)."""
    covered: bool = False
    """Set when the lease lapsed while the call ran: its cost was charged with the lease."""

    @property
    def call_id(self) -> str:
        return self.call.call_id


@dataclass
class RunDelta:
    """Usage to add to one GenerationRun's status at the next sync."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    credits: int = 0


@dataclass
class LeaseSettings:
    holder: str
    lease_seconds: int
    lease_factor: int
    lease_max_fraction: int
    idle_release_seconds: float
    refill_horizon_ms: int = 500
    """A lease's spare part should cover what this replica reserves in this long."""


@dataclass
class LeaseAccount:
    """The local books of one replica for one CreditBudget."""

    namespace: str
    budget: str
    settings: LeaseSettings
    kube: KubeClient
    store: ObjectStore
    held: int = 0
    in_flight: dict[str, Hold] = field(default_factory=dict)
    settled_unflushed: int = 0
    drafts: list[LedgerDraft] = field(default_factory=list)
    run_deltas: dict[tuple[str, str], RunDelta] = field(
        default_factory=lambda: defaultdict(RunDelta)
    )
    spec: CreditBudgetSpec | None = None
    status: CreditBudgetStatus | None = None
    spec_read_at: float = 0.0
    reads: SingleFlight[str, CreditBudget] = field(default_factory=SingleFlight)
    last_activity: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    releasing: bool = False
    """An idle release is being written: new reservations wait for the write after it."""
    synced_at: float = 0.0
    demand: DemandWindow = field(default_factory=DemandWindow)
    sync_ms: int = 0
    """A running average of how long a sync takes (read, segment, write)."""
    growths: SingleFlight[str, LeaseResult] = field(default_factory=SingleFlight)
    """The lease write under way that calls without room wait for (at most one)."""
    waiting: Counter[int] = field(default_factory=Counter)
    """Worst cases of the calls waiting for room (how many of each): the next write asks
    for all of them, and at least for the largest."""
    tight: bool = False
    """The last grant was short: the budget is nearly exhausted. The lease then keeps no
    spare credits (other replicas may need them) and every reservation waits for a write
    (or decides on one less than FRESH_ENOUGH_SECONDS old)."""

    @property
    def available(self) -> int:
        """Credits this replica may still reserve without a sync."""
        return credits_left(self.held, self.settled_unflushed, self.in_flight_credits)

    @property
    def unclaimed(self) -> int:
        """What is available less what calls waiting for a write asked for: that room is
        theirs (taking it would send each of them back for another write)."""
        return credits_left(
            self.held, self.settled_unflushed, self.in_flight_credits + self.waiting_credits
        )

    @property
    def waiting_credits(self) -> int:
        return sum(need * count for need, count in self.waiting.items())

    @contextlib.contextmanager
    def waiting_for(self, need: int) -> Iterator[None]:
        """Count a call's worst case as waiting for room while the block runs."""
        self.waiting[need] += 1
        try:
            yield
        finally:
            self.waiting[need] -= 1
            if self.waiting[need] <= 0:
                del self.waiting[need]

    @property
    def in_flight_credits(self) -> int:
        return sum(h.credits for h in self.in_flight.values() if not h.covered)

    def budget_figures(self) -> BudgetFigures:
        """The budget as this replica knows it, for refusals: spent includes what it settled
        and has not written, held is every replica's calls in flight (its own spare excluded).
        """
        spec = self.spec
        if spec is None:
            raise RuntimeError("the budget has not been read")
        status = self.status or CreditBudgetStatus()
        others = status.reserved_credits - self.held
        return BudgetFigures(
            namespace=self.namespace,
            budget=self.budget,
            limit_credits=spec.limit_credits,
            spent_credits=status.spent_credits + self.settled_unflushed,
            held_credits=max(0, others) + self.in_flight_credits,
            period=describe_period(spec.period, datetime.now(UTC)),
        )

    def run_committed(self, run: str, run_uid: str) -> tuple[int, int]:
        """Credits of one run on this replica: (settled and not yet recorded, held in flight)."""
        held = sum(
            h.credits
            for h in self.in_flight.values()
            if h.call.run == run and h.call.run_uid == run_uid
        )
        delta = self.run_deltas.get((run, run_uid))
        return (delta.credits if delta is not None else 0), held

    def record(self, draft: LedgerDraft) -> None:
        self.drafts.append(draft)

    def hold(self, hold: Hold) -> None:
        self.in_flight[hold.call_id] = hold
        self.last_activity = time.monotonic()
        self.demand.add(_now_ms(), hold.credits)

    def spare_wanted(self, need: int) -> int:
        """The spare credits to ask for: room for the call waiting, and for the recent rate."""
        return max(need * self.settings.lease_factor, self._expected_use())

    def wants_refill(self) -> bool:
        """Whether to top the lease up now, before a call has to wait for it.

        Near exhaustion (tight) every reservation syncs anyway, and an idle release must
        not be undone; otherwise refill once the room left is under half the expected use.
        """
        if self.growths.running(_GROW) or self.releasing or self.tight or self.lock.locked():
            return False
        return self.available < self._expected_use() // 2

    def _expected_use(self) -> int:
        """Credits reserved until a top-up started now has landed and the timer has run."""
        horizon_ms = self.settings.refill_horizon_ms + 2 * self.sync_ms
        return self.demand.within(_now_ms(), horizon_ms)

    def settle(
        self, call_id: str, credits: int, prompt_tokens: int, completion_tokens: int
    ) -> Hold:
        hold = self.in_flight.pop(call_id)
        if not hold.covered:
            self.settled_unflushed += credits
        delta = self.run_deltas[(hold.call.run, hold.call.run_uid)]
        delta.calls += 1
        delta.prompt_tokens += prompt_tokens
        delta.completion_tokens += completion_tokens
        delta.credits += credits
        self.last_activity = time.monotonic()
        return hold

    def release(self, call_id: str) -> Hold:
        hold = self.in_flight.pop(call_id)
        self.last_activity = time.monotonic()
        return hold

    # ------------------------------------------------------------------ I/O

    async def refresh(self, max_age_seconds: float = 5.0) -> None:
        """Read the budget if the cached copy is older than max_age_seconds."""
        if self.spec is not None and time.monotonic() - self.spec_read_at < max_age_seconds:
            return
        # One read however many calls find the copy stale at once.
        budget = await asyncio.shield(self.reads.start(_READ, self._read))
        if time.monotonic() - self.spec_read_at >= max_age_seconds:
            self.spec, self.status = budget.spec, budget.status
            self.spec_read_at = time.monotonic()

    async def _read(self) -> CreditBudget:
        path = custom_object_path("creditbudgets", self.namespace, self.budget)
        try:
            body = await self.kube.get(path)
        except KubeError as error:
            if error.status == 404:
                raise BudgetNotFoundError(
                    f"CreditBudget {self.namespace}/{self.budget} does not exist"
                ) from error
            raise BudgetUnavailableError(
                f"cannot read CreditBudget {self.namespace}/{self.budget}: {error}"
            ) from error
        budget = CreditBudget.model_validate(body)
        budget.metadata.resource_version = body["metadata"]["resourceVersion"]
        return budget

    async def sync(
        self,
        headroom: int,
        *,
        minimum: int = 0,
        release_idle: bool = False,
        resize_only: bool = False,
    ) -> LeaseResult:
        """One CAS write (retried on conflict): settle, re-lease, append the ledger segment.

        Callers hold `self.lock`. Calls keep reserving from the lease while the write is in
        flight, so the request always keeps the lease's unused part (it was granted within
        the limit, so it can be granted again); only an idle release shrinks the lease, and
        it stops new reservations until it is done.

        `resize_only` grows the lease without settling or writing a ledger segment (the
        timer's next write does both): one read and one write, for calls waiting on room.
        Settled-but-unwritten costs stay inside the lease as if still in flight, so the
        status keeps covering them. It falls back to a full sync whenever the write would
        carry ledger entries of its own (rollover, expiry, lost lease, overrun).
        """
        self.releasing = release_idle
        started = time.monotonic()
        try:
            for attempt in range(1, MAX_CAS_ATTEMPTS + 1):
                try:
                    result = await self._sync_once(headroom, minimum, release_idle, resize_only)
                    elapsed_ms = int((time.monotonic() - started) * 1000)
                    # Remember how long writes take now: the lease must outlast the next one.
                    self.sync_ms = (self.sync_ms + elapsed_ms) // 2
                    return result
                except ConflictError:
                    metrics.BUDGET_CAS_CONFLICTS.inc()
                    # Jittered exponential backoff, so racing replicas fall out of step.
                    await asyncio.sleep(random.uniform(0, min(0.002 * 2**attempt, 0.2)))  # noqa: S311
        finally:
            self.releasing = False
        raise BudgetUnavailableError(
            f"CreditBudget {self.namespace}/{self.budget}: {MAX_CAS_ATTEMPTS} conflicting writes "
            "in a row"
        )

    def grow(self, need: int) -> asyncio.Future[LeaseResult]:
        """The resize-only write under way, or a new one: one write for every call waiting.

        Calls without room await this instead of queueing on the lock, so that when the
        write lands they all find their room in the same turn of the event loop (a queue on
        the lock lets one through per turn, and under load every new call joins it).
        """
        return self.growths.start(_GROW, lambda: self._grow(need))

    async def _grow(self, need: int) -> LeaseResult:
        async with self.lock:
            headroom = max(self.spare_wanted(need), self.waiting_credits)
            # At least the largest waiting call, or it could wait behind writes made for
            # smaller ones for ever.
            largest = max(self.waiting, default=0)
            return await self.sync(headroom, minimum=max(need, largest), resize_only=True)

    async def _sync_once(
        self, headroom: int, minimum: int, release_idle: bool, resize_only: bool
    ) -> LeaseResult:
        budget = await self._read()
        now = datetime.now(UTC)
        settled = 0 if resize_only else self.settled_unflushed
        # Settled but not yet written: still part of the lease until a full sync settles it.
        in_flight = self.in_flight_credits + self.settled_unflushed - settled
        call_drafts = [] if resize_only else list(self.drafts)
        keep = 0 if (release_idle or self.tight) else max(0, self.held - in_flight - settled)
        ceiling = max(1, budget.spec.limit_credits // self.settings.lease_max_fraction)
        request = LeaseRequest(
            holder=self.settings.holder,
            held_credits=self.held,
            settled_credits=settled,
            in_flight_credits=in_flight,
            # The ceiling spreads credits over replicas, but never below the call waiting.
            headroom_credits=max(keep, minimum, min(headroom, ceiling)),
            lease_seconds=self.settings.lease_seconds,
        )
        result = sync_lease(budget.spec, budget.status, request, now)
        if resize_only and (result.system_entries or result.lease_lost):
            return await self._sync_once(headroom, minimum, release_idle, resize_only=False)
        system_drafts = [
            LedgerDraft(
                kind=entry.kind,  # type: ignore[arg-type]
                at=now,
                namespace=self.namespace,
                budget=self.budget,
                holder=entry.holder,
                credits=entry.credits,
                detail=entry.detail,
            )
            for entry in result.system_entries
        ]
        if result.lease_lost:
            # The lapsed lease was charged as a whole; these settles are already paid for.
            call_drafts = [
                replace(draft, kind="settle-covered") if draft.kind == "settle" else draft
                for draft in call_drafts
            ]
        status = await self._append_segment(budget, result.status, system_drafts + call_drafts)
        await self._write_status(budget, status)

        # Committed. Local books: what was flushed leaves, what arrived meanwhile stays.
        if result.lease_lost:
            for hold in self.in_flight.values():
                hold.covered = True
        self.held = result.lease_credits
        self.tight = result.granted_headroom < request.headroom_credits
        self.settled_unflushed -= settled
        del self.drafts[: len(call_drafts)]
        self.spec, self.status = budget.spec, status
        self.spec_read_at = self.synced_at = time.monotonic()
        metrics.BUDGET_SYNCS.inc()
        return result

    async def _append_segment(
        self, budget: CreditBudget, status: CreditBudgetStatus, drafts: list[LedgerDraft]
    ) -> CreditBudgetStatus:
        """Write the segment (write-once) and return the status pointing at it."""
        if not drafts:
            return status
        head = budget.status.ledger_head if budget.status else None
        segment = chain_segment(
            drafts,
            namespace=self.namespace,
            budget=self.budget,
            head_sequence=head.sequence if head else 0,
            head_hash=head.hash if head else None,
            head_segment_uri=head.segment_uri if head else None,
        )
        key = segment_key(self.namespace, self.budget, segment)
        body = canonical_json(segment.model_dump(mode="json"))
        try:
            await self.store.aput_if_absent(key, body, "application/json")
        except StorageError as error:
            raise BudgetUnavailableError(f"cannot write the ledger: {error}") from error
        last = segment.entries[-1]
        head_model = LedgerHead(
            sequence=last.sequence, hash=last.hash, segment_uri=self.store.uri(key)
        )
        return status.model_copy(update={"ledger_head": head_model})

    async def _write_status(self, budget: CreditBudget, status: CreditBudgetStatus) -> None:
        wire = status.to_wire()
        owned = {
            key: wire.get(key)
            for key in (
                "spentCredits",
                "reservedCredits",
                "remainingCredits",
                "periodStart",
                "periodEnd",
                "reservations",
                "ledgerHead",
                "thresholdsCrossed",
            )
        }
        patch: dict[str, Any] = {
            "metadata": {"resourceVersion": budget.metadata.resource_version},
            "status": owned,
        }
        path = custom_object_path("creditbudgets", self.namespace, self.budget, "status")
        try:
            await self.kube.merge_patch(path, patch)
        except ConflictError:
            raise
        except KubeError as error:
            log.error(
                "Budget write refused",
                namespace=self.namespace,
                budget=self.budget,
                error=str(error),
            )
            raise BudgetUnavailableError(
                f"cannot write CreditBudget {self.namespace}/{self.budget}: {error}"
            ) from error

    async def flush_run_usage(self) -> None:
        """Add the usage of calls settled since the last flush to each run's status."""
        deltas = {key: delta for key, delta in self.run_deltas.items() if delta.calls}
        for key in deltas:
            self.run_deltas.pop(key, None)
        for (run, run_uid), delta in deltas.items():
            try:
                await add_run_usage(self.kube, self.namespace, run, run_uid, delta)
            except KubeError as error:
                log.warning("Could not record run usage", run=run, error=str(error))

    def needs_sync(self) -> bool:
        """Whether the timer should write: something to settle, record, renew or give back."""
        if self.settled_unflushed or self.drafts:
            return True
        if self.held == 0:
            return False
        idle = time.monotonic() - self.last_activity > self.settings.idle_release_seconds
        if idle and self.held > self.in_flight_credits:
            return True
        # Renew before expiry: a third of the lease lifetime after the last write.
        return time.monotonic() - self.spec_read_at > self.settings.lease_seconds / 3


async def add_run_usage(
    kube: KubeClient, namespace: str, run: str, run_uid: str, delta: RunDelta
) -> None:
    """Compare-and-swap add to GenerationRun status.usage (the gateway is its only writer)."""
    path = custom_object_path("generationruns", namespace, run)
    for _attempt in range(MAX_CAS_ATTEMPTS):
        body = await kube.get(path)
        if body["metadata"].get("uid") != run_uid:
            return  # the run was deleted and re-created: this usage belongs to the old one
        usage = dict((body.get("status") or {}).get("usage") or {})
        patch = {
            "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
            "status": {
                "usage": {
                    "calls": int(usage.get("calls", 0)) + delta.calls,
                    "promptTokens": int(usage.get("promptTokens", 0)) + delta.prompt_tokens,
                    "completionTokens": int(usage.get("completionTokens", 0))
                    + delta.completion_tokens,
                    "credits": int(usage.get("credits", 0)) + delta.credits,
                }
            },
        }
        try:
            await kube.merge_patch(f"{path}/status", patch)
            return
        except ConflictError:
            await asyncio.sleep(0.005)
    raise KubeError(409, "Conflict", f"usage of {namespace}/{run}: too many conflicting writes")


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


def recently_synced(account: LeaseAccount) -> bool:
    """Whether the account's view of the budget is fresh enough to refuse on."""
    return time.monotonic() - account.synced_at < FRESH_ENOUGH_SECONDS
