"""Budget arithmetic in integers: periods, leases, settlement, expiry, thresholds.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Budget accounting".

Each gateway replica holds at most one lease on a CreditBudget (a Reservation in its status).
It reserves every call's worst-case cost against that lease in memory and, in one
compare-and-swap write (`sync_lease`), moves the actual cost of finished calls into
`spentCredits` and resizes its lease to what its calls in flight need plus some headroom.
Because every grant is bounded by `limit - spent - reserved`, `spent + reserved <= limit`
holds after every write from any number of replicas; the API server's resourceVersion
precondition serialises the writes.
"""

from __future__ import annotations

import calendar
import fnmatch
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from smartspec.api.v1alpha1.common import ConditionStatus
from smartspec.api.v1alpha1.creditbudget import (
    CreditBudgetSpec,
    CreditBudgetStatus,
    EnforcementMode,
    ModelPolicy,
    Period,
    PeriodType,
    Reason,
    Reservation,
)


class BudgetAccountingError(ValueError):
    """A malformed sync request (a bug in the caller, never retried)."""


def period_bounds(period: Period, now: datetime) -> tuple[datetime, datetime | None]:
    """The [start, end) of the period containing `now`, at midnight in the period's zone.

    Computed on the zone's wall clock, so a day is 23 or 25 hours across a DST change, and a
    month is a calendar month. Returned in UTC, so subtraction gives real durations (Python
    subtracts two times of the same zone by wall clock). Lifetime periods start at the epoch
    and never end.
    """
    zone = ZoneInfo(period.time_zone)
    local = now.astimezone(zone)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period.type is PeriodType.LIFETIME:
        return datetime(1970, 1, 1, tzinfo=UTC), None
    if period.type is PeriodType.DAILY:
        start = midnight
        end = _wall(start.date() + timedelta(days=1), zone)
    elif period.type is PeriodType.WEEKLY:
        start = _wall(midnight.date() - timedelta(days=midnight.weekday()), zone)  # Monday
        end = _wall(start.date() + timedelta(days=7), zone)
    else:
        start = _wall(midnight.date().replace(day=1), zone)
        days = calendar.monthrange(start.year, start.month)[1]
        end = _wall(start.date() + timedelta(days=days), zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def describe_period(period: Period, now: datetime) -> str:
    """The period containing `now` in words, for messages: "Monthly period from ... (UTC)"."""
    if period.type is PeriodType.LIFETIME:
        return "Lifetime period"
    start, _ = period_bounds(period, now)
    local = start.astimezone(ZoneInfo(period.time_zone))
    return f"{period.type.value} period from {local.isoformat()} ({period.time_zone})"


def _wall(day: date, zone: ZoneInfo) -> datetime:
    # Midnight of a calendar date on the zone's wall clock (not start + 24 h).
    return datetime(day.year, day.month, day.day, tzinfo=zone)


@dataclass(frozen=True)
class SystemEntry:
    """A ledger entry the accounting itself causes (not a model call)."""

    kind: str
    credits: int
    holder: str
    detail: str


@dataclass(frozen=True)
class LeaseRequest:
    """What one replica asks of the budget in one write."""

    holder: str
    held_credits: int
    """The lease the holder believes it has (from its previous sync; 0 at start)."""
    settled_credits: int
    """Actual cost of the holder's calls finished since its last sync (moves into spent)."""
    in_flight_credits: int
    """Worst-case cost of the holder's calls still running (stays leased)."""
    headroom_credits: int
    """Extra credits wanted for calls about to start."""
    lease_seconds: int
    """How long the lease lives unless renewed by the next sync."""


@dataclass(frozen=True)
class LeaseResult:
    """The status to write, and what the replica may now spend."""

    status: CreditBudgetStatus
    lease_credits: int
    granted_headroom: int
    system_entries: list[SystemEntry] = field(default_factory=list)
    over_limit: bool = False
    """Shadow mode only: the lease went past what Enforce would have granted."""
    lease_lost: bool = False
    """The holder's lease had lapsed and was charged as spent by another writer: its settled
    and in-flight calls are already paid for, and must not be charged again."""
    overrun: int = 0
    """Credits settled beyond the holder's lease (a provider exceeded its token bound)."""


def sync_lease(
    spec: CreditBudgetSpec, status: CreditBudgetStatus | None, request: LeaseRequest, now: datetime
) -> LeaseResult:
    """One compare-and-swap step for one replica: roll over, expire, settle, re-lease."""
    _check_request(request)
    current = status or CreditBudgetStatus()
    entries: list[SystemEntry] = []
    start, end = period_bounds(spec.period, now)
    spent = current.spent_credits
    if current.period_start is None or current.period_start != start:
        if current.period_start is not None:
            entries.append(SystemEntry("rollover", spent, request.holder, f"period from {start}"))
        spent = 0
        thresholds: list[int] = []
    else:
        thresholds = list(current.thresholds_crossed)

    mine = next((r for r in current.reservations if r.id == _lease_id(request.holder)), None)
    lost = mine is None and request.held_credits > 0
    settled, in_flight = request.settled_credits, request.in_flight_credits
    if lost:
        # Another writer charged the whole lapsed lease as spent; that covers these calls.
        entries.append(SystemEntry("lease-lost", 0, request.holder, "lease lapsed before sync"))
        settled, in_flight = 0, 0
    overrun = 0 if lost else max(0, settled + in_flight - (mine.credits if mine else 0))
    if overrun:
        # Only a provider reporting more tokens than the bound it was given can get here.
        # What was billed is charged all the same: the ledger never undercounts.
        entries.append(SystemEntry("overrun", overrun, request.holder, "settled past the lease"))

    others: list[Reservation] = []
    for reservation in current.reservations:
        if reservation.id == _lease_id(request.holder):
            continue
        if reservation.expires_at <= now:
            # The holder died or stalled: it may have been billed for calls it never settled,
            # so its lease counts as spent (never undercount what a provider may charge).
            spent += reservation.credits
            entries.append(
                SystemEntry("lease-expired", reservation.credits, reservation.holder, "lapsed")
            )
        else:
            others.append(reservation)

    spent += settled
    reserved_by_others = sum(r.credits for r in others)
    available = credits_left(spec.limit_credits, spent, reserved_by_others + in_flight)
    if spec.enforcement is EnforcementMode.ENFORCE:
        granted = max(0, min(request.headroom_credits, available))
        over = False
    else:
        granted = request.headroom_credits
        over = granted > max(0, available)
    lease_credits = in_flight + granted

    reservations = list(others)
    if lease_credits > 0:
        reservations.append(
            Reservation(
                id=_lease_id(request.holder),
                holder=request.holder,
                credits=lease_credits,
                expires_at=now + timedelta(seconds=request.lease_seconds),
            )
        )
    reservations.sort(key=lambda r: r.id)
    reserved = sum(r.credits for r in reservations)
    new_status = current.model_copy(
        update={
            "spent_credits": spent,
            "reserved_credits": reserved,
            "remaining_credits": max(0, credits_left(spec.limit_credits, spent, reserved)),
            "period_start": start,
            "period_end": end,
            "reservations": reservations,
            "thresholds_crossed": crossed_thresholds(spec, spent, thresholds),
        }
    )
    return LeaseResult(new_status, lease_credits, granted, entries, over, lost, overrun)


class DemandWindow:
    """Credits one replica reserved over the last second, in time buckets.

    It sizes a lease's spare part: a replica should hold what it will reserve before its
    next write, or calls queue for one write after another (each adding only a few calls'
    worth) when many run at once. Times are integer milliseconds from the caller's clock.
    """

    def __init__(self, window_ms: int = 1000, bucket_ms: int = 100) -> None:
        if window_ms <= 0 or bucket_ms <= 0 or window_ms % bucket_ms:
            raise ValueError("the window must be a positive multiple of the bucket")
        self.window_ms = window_ms
        self.bucket_ms = bucket_ms
        self._buckets: dict[int, int] = {}

    def add(self, now_ms: int, credits: int) -> None:
        bucket = now_ms // self.bucket_ms
        self._buckets[bucket] = self._buckets.get(bucket, 0) + credits
        self._forget(bucket)

    def per_second(self, now_ms: int) -> int:
        """Credits reserved in the window ending now, scaled to one second."""
        self._forget(now_ms // self.bucket_ms)
        return sum(self._buckets.values()) * 1000 // self.window_ms

    def within(self, now_ms: int, horizon_ms: int) -> int:
        """Credits expected to be reserved in the next horizon_ms at the current rate."""
        return self.per_second(now_ms) * horizon_ms // 1000

    def _forget(self, current_bucket: int) -> None:
        oldest = current_bucket - self.window_ms // self.bucket_ms + 1
        for bucket in [b for b in self._buckets if b < oldest]:
            del self._buckets[bucket]


def accounting_to_open(
    spec: CreditBudgetSpec, status: CreditBudgetStatus | None, now: datetime
) -> dict[str, object] | None:
    """The accounting fields a budget should show before any gateway has written it, or after
    its limit changed; None when the status is already current.

    A new budget shows 0 spent, 0 reserved, the whole limit remaining and the current
    period, instead of empty columns until its first model call; a changed limit shows in
    remainingCredits at once. The gateway remains the writer of every change of spent and
    reserved credits: this only fills what is missing or derived (wire names, for a merge
    patch written with a resourceVersion precondition).
    """
    current = status or CreditBudgetStatus()
    if current.period_start is None:
        start, end = period_bounds(spec.period, now)
        return {
            "spentCredits": 0,
            "reservedCredits": 0,
            "remainingCredits": spec.limit_credits,
            "periodStart": start.isoformat().replace("+00:00", "Z"),
            "periodEnd": end.isoformat().replace("+00:00", "Z") if end else None,
        }
    remaining = remaining_credits(spec, current)
    if current.remaining_credits != remaining:
        return {"remainingCredits": remaining}
    return None


def crossed_thresholds(spec: CreditBudgetSpec, spent: int, already: list[int]) -> list[int]:
    """Soft thresholds reached by `spent` this period (integer percent arithmetic)."""
    reached = {
        threshold
        for threshold in spec.soft_thresholds_percent
        if spent * 100 >= threshold * spec.limit_credits
    }
    return sorted(reached | set(already))


def model_allowed(policy: ModelPolicy, model: str) -> bool:
    """Shell-glob policy: a deny match refuses even when an allow pattern matches."""
    if any(fnmatch.fnmatchcase(model, pattern) for pattern in policy.deny):
        return False
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in policy.allow)


def credits_left(ceiling: int, spent: int, held: int) -> int:
    """What `ceiling` leaves once `spent` and `held` are taken out: negative when past it.

    The one formula of every "credits left" (CORE-003, "Budget accounting"): a budget
    (limit, spent this period, every lease), a lease (its credits, costs settled and not
    written yet, calls in flight), a run's cap (the cap, the run's usage, its calls in
    flight). A figure shown to a person is floored at 0 where it is shown.
    """
    return ceiling - spent - held


def remaining_credits(spec: CreditBudgetSpec, status: CreditBudgetStatus | None) -> int:
    """Credits neither spent nor held by any lease (status.remainingCredits)."""
    if status is None:
        return spec.limit_credits
    return max(0, credits_left(spec.limit_credits, status.spent_credits, status.reserved_credits))


def lease_id(holder: str) -> str:
    """The Reservation id of a holder's lease."""
    return _lease_id(holder)


def _lease_id(holder: str) -> str:
    return holder[:64]


def _check_request(request: LeaseRequest) -> None:
    for name in ("held_credits", "settled_credits", "in_flight_credits", "headroom_credits"):
        if getattr(request, name) < 0:
            raise BudgetAccountingError(f"{name} must not be negative")
    if request.lease_seconds < 1:
        raise BudgetAccountingError("lease_seconds must be at least 1")


def budget_conditions(
    spec: CreditBudgetSpec, status: CreditBudgetStatus | None
) -> list[tuple[str, ConditionStatus, str, str]]:
    """(type, status, reason, message) of Ready, BudgetExhausted and ThresholdReached, read
    from the gateway-written accounting. The message of ThresholdReached names the highest
    threshold crossed, so a change of message is a newly crossed threshold."""
    # Messages carry no running totals: a condition is rewritten only when it turns, so this
    # writer never competes with the gateway's compare-and-swap writes on every call.
    current = status or CreditBudgetStatus()
    enforced = spec.enforcement is EnforcementMode.ENFORCE
    conditions: list[tuple[str, ConditionStatus, str, str]] = [
        ("Ready", "True", "AccountingCurrent", "the gateway keeps spentCredits and leases")
    ]
    if current.spent_credits >= spec.limit_credits:
        consequence = "calls are refused" if enforced else "Shadow mode lets calls through"
        message = f"all {spec.limit_credits} credits of this period are spent; {consequence}"
        conditions.append(("BudgetExhausted", "True", "LimitReached", message))
    else:
        conditions.append(
            ("BudgetExhausted", "False", "CreditsAvailable", "credits remain this period")
        )
    crossed = sorted(current.thresholds_crossed)
    if crossed:
        message = f"spending reached {crossed[-1]}% of the limit this period"
        conditions.append(("ThresholdReached", "True", "ThresholdCrossed", message))
    else:
        conditions.append(
            ("ThresholdReached", "False", "BelowThresholds", "below every soft threshold")
        )
    return conditions


TIME_ZONE_FIELD = "spec.period.timeZone"
"""The one field the CRD schema admits that the operator's types may still refuse."""


def invalid_budget_condition(
    fields: frozenset[str], problems: list[str]
) -> tuple[str, ConditionStatus, str, str]:
    """(type, status, reason, message) of Ready for a budget the API server admitted but the
    operator's types refuse: the gateway refuses every call against it until it is fixed."""
    reason = Reason.INVALID_TIME_ZONE if TIME_ZONE_FIELD in fields else Reason.INVALID
    return ("Ready", "False", reason.value, "; ".join(problems))
