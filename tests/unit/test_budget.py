"""Budget arithmetic (specs/CORE-003-gateway-and-budgets.md, "Budget accounting")."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from smartspec.api.v1alpha1.creditbudget import CreditBudgetSpec, CreditBudgetStatus, Period
from smartspec.logic.budget import (
    BudgetAccountingError,
    DemandWindow,
    LeaseRequest,
    accounting_to_open,
    budget_conditions,
    crossed_thresholds,
    period_bounds,
    remaining_credits,
    sync_lease,
)

NOW = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # 01:30 in Berlin, the night DST begins


def budget(limit: int = 1000, mode: str = "Enforce", period: str = "Monthly") -> CreditBudgetSpec:
    return CreditBudgetSpec.model_validate(
        {"limitCredits": limit, "enforcement": mode, "period": {"type": period}}
    )


def request(
    holder: str = "gw-1", held: int = 0, settled: int = 0, in_flight: int = 0, headroom: int = 0
) -> LeaseRequest:
    return LeaseRequest(holder, held, settled, in_flight, headroom, lease_seconds=30)


@pytest.mark.parametrize(
    ("kind", "zone", "now", "start", "end"),
    [
        ("Daily", "Europe/Berlin", NOW, "2026-03-28T23:00:00+00:00", "2026-03-29T22:00:00+00:00"),
        ("Weekly", "UTC", NOW, "2026-03-23T00:00:00+00:00", "2026-03-30T00:00:00+00:00"),
        (
            "Monthly",
            "UTC",
            datetime(2026, 2, 28, 23, 59, tzinfo=UTC),
            "2026-02-01T00:00:00+00:00",
            "2026-03-01T00:00:00+00:00",
        ),
        (
            "Monthly",
            "America/New_York",
            datetime(2026, 1, 1, 3, 0, tzinfo=UTC),
            "2025-12-01T05:00:00+00:00",
            "2026-01-01T05:00:00+00:00",
        ),
    ],
)
def test_period_bounds_follow_the_wall_clock(
    kind: str, zone: str, now: datetime, start: str, end: str
) -> None:
    bounds = period_bounds(Period.model_validate({"type": kind, "timeZone": zone}), now)
    assert bounds[0].isoformat() == start
    assert bounds[1] is not None
    assert bounds[1].isoformat() == end


def test_daylight_saving_day_is_23_hours() -> None:
    start, end = period_bounds(
        Period.model_validate({"type": "Daily", "timeZone": "Europe/Berlin"}), NOW
    )
    assert end is not None
    assert end - start == timedelta(hours=23)


def test_lifetime_never_ends() -> None:
    start, end = period_bounds(Period.model_validate({"type": "Lifetime"}), NOW)
    assert end is None
    assert start.year == 1970


def test_first_lease_is_bounded_by_the_limit() -> None:
    result = sync_lease(budget(100), None, request(headroom=150), NOW)
    assert (result.lease_credits, result.granted_headroom) == (100, 100)
    assert (result.status.reserved_credits, result.status.remaining_credits) == (100, 0)


def test_settling_moves_actual_cost_into_spent_and_releases_the_rest() -> None:
    first = sync_lease(budget(100), None, request(headroom=60), NOW).status
    second = sync_lease(budget(100), first, request(held=60, settled=25, in_flight=10), NOW)
    assert second.status.spent_credits == 25
    assert second.lease_credits == 10
    assert second.status.reserved_credits == 10


def test_settling_past_the_lease_is_charged_and_reported() -> None:
    first = sync_lease(budget(100), None, request(headroom=10), NOW).status
    result = sync_lease(budget(100), first, request(held=10, settled=8, in_flight=5), NOW)
    assert result.overrun == 3
    assert result.status.spent_credits == 8
    assert [entry.kind for entry in result.system_entries] == ["overrun"]


def test_negative_amounts_are_refused() -> None:
    with pytest.raises(BudgetAccountingError, match="settled_credits must not be negative"):
        sync_lease(budget(100), None, request(settled=-1), NOW)


def test_lapsed_lease_of_another_holder_is_charged_as_spent() -> None:
    status = sync_lease(budget(100), None, request("gw-dead", headroom=40), NOW).status
    later = NOW + timedelta(seconds=31)
    result = sync_lease(budget(100), status, request("gw-2", headroom=100), later)
    assert result.status.spent_credits == 40
    assert [entry.kind for entry in result.system_entries] == ["lease-expired"]
    assert result.lease_credits == 60


def test_a_holder_whose_lease_lapsed_is_not_charged_twice() -> None:
    status = sync_lease(budget(100), None, request("gw-1", headroom=40), NOW).status
    later = NOW + timedelta(seconds=31)
    status = sync_lease(budget(100), status, request("gw-2"), later).status
    assert status.spent_credits == 40
    result = sync_lease(
        budget(100), status, request("gw-1", held=40, settled=30, in_flight=5), later
    )
    assert result.lease_lost
    assert result.status.spent_credits == 40


def test_rollover_resets_spent_and_thresholds() -> None:
    spec = budget(100, period="Daily")
    status = sync_lease(spec, None, request(headroom=90), NOW).status
    status = sync_lease(spec, status, request(held=90, settled=90), NOW).status
    assert status.thresholds_crossed == [80]
    tomorrow = NOW + timedelta(days=1)
    result = sync_lease(spec, status, request(headroom=10), tomorrow)
    assert result.status.spent_credits == 0
    assert result.status.thresholds_crossed == []
    assert [entry.kind for entry in result.system_entries] == ["rollover"]


def test_shadow_mode_grants_past_the_limit_and_says_so() -> None:
    result = sync_lease(budget(100, mode="Shadow"), None, request(headroom=150), NOW)
    assert result.lease_credits == 150
    assert result.over_limit


def test_thresholds_use_integer_percentages() -> None:
    spec = budget(1000)
    assert crossed_thresholds(spec, 799, []) == []
    assert crossed_thresholds(spec, 800, []) == [80]
    assert crossed_thresholds(spec, 950, [80]) == [80, 95]


def test_remaining_never_negative() -> None:
    status = CreditBudgetStatus(spent_credits=90, reserved_credits=20)
    assert remaining_credits(budget(100), status) == 0


def test_invariant_holds_for_random_interleavings_of_many_holders() -> None:
    rng = random.Random(7)  # noqa: S311 (a seeded, repeatable interleaving; not crypto)
    spec = budget(10_000)
    status: CreditBudgetStatus | None = None
    holders = {f"gw-{i}": {"held": 0, "in_flight": 0} for i in range(6)}
    now = NOW
    provider_spend = 0
    for _ in range(3000):
        now += timedelta(milliseconds=rng.randint(0, 50))
        name = rng.choice(list(holders))
        local = holders[name]
        in_flight = rng.randint(0, local["held"]) if local["held"] else 0
        settled = rng.randint(0, local["held"] - in_flight) if local["held"] - in_flight else 0
        result = sync_lease(
            spec,
            status,
            request(
                name,
                held=local["held"],
                settled=settled,
                in_flight=in_flight,
                headroom=rng.randint(0, 500),
            ),
            now,
        )
        if not result.lease_lost:
            provider_spend += settled
        status = result.status
        local["held"] = result.lease_credits
        assert status.spent_credits + status.reserved_credits <= spec.limit_credits
        assert status.reserved_credits == sum(r.credits for r in status.reservations)
    assert status is not None
    assert provider_spend <= status.spent_credits <= spec.limit_credits


def test_conditions_turn_on_exhaustion_and_thresholds_only() -> None:
    spec = budget(1000)
    fresh = {kind: (status, reason) for kind, status, reason, _ in budget_conditions(spec, None)}
    assert fresh == {
        "Ready": ("True", "AccountingCurrent"),
        "BudgetExhausted": ("False", "CreditsAvailable"),
        "ThresholdReached": ("False", "BelowThresholds"),
    }
    busy = CreditBudgetStatus(spent_credits=500, reserved_credits=100)
    assert budget_conditions(spec, busy) == budget_conditions(spec, None), (
        "no running totals in messages: spending alone rewrites nothing"
    )
    spent = CreditBudgetStatus(spent_credits=1000, thresholds_crossed=[80, 95])
    turned = {
        kind: (status, message) for kind, status, _, message in budget_conditions(spec, spent)
    }
    assert turned["BudgetExhausted"][0] == "True"
    assert "calls are refused" in turned["BudgetExhausted"][1]
    assert turned["ThresholdReached"] == ("True", "spending reached 95% of the limit this period")


def test_demand_window_counts_the_last_second_only() -> None:
    window = DemandWindow(window_ms=1000, bucket_ms=100)
    window.add(10_000, 300)
    window.add(10_450, 200)
    assert window.per_second(10_500) == 500
    assert window.within(10_500, 250) == 125, "a quarter second at 500 credits/s"
    # The 10.0 s bucket leaves the window once its whole second is over.
    assert window.per_second(11_050) == 200
    assert window.per_second(11_500) == 0
    window.add(20_000, 7)
    assert window.per_second(20_000) == 7, "old buckets are forgotten, not summed"


def test_demand_window_scales_a_shorter_window_to_a_second() -> None:
    window = DemandWindow(window_ms=500, bucket_ms=100)
    window.add(0, 40)
    assert window.per_second(0) == 80


@pytest.mark.parametrize(("window_ms", "bucket_ms"), [(0, 100), (1000, 0), (1000, 300)])
def test_demand_window_refuses_a_window_that_is_not_whole_buckets(
    window_ms: int, bucket_ms: int
) -> None:
    with pytest.raises(ValueError, match="multiple of the bucket"):
        DemandWindow(window_ms=window_ms, bucket_ms=bucket_ms)


def test_a_budget_no_gateway_wrote_opens_with_its_whole_limit() -> None:
    spec = CreditBudgetSpec.model_validate(
        {"limitCredits": 2_000, "period": {"type": "Daily", "timeZone": "Europe/Berlin"}}
    )
    now = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    opened = accounting_to_open(spec, None, now)
    assert opened == {
        "spentCredits": 0,
        "reservedCredits": 0,
        "remainingCredits": 2_000,
        "periodStart": "2026-11-30T23:00:00Z",
        "periodEnd": "2026-12-01T23:00:00Z",
    }
    written = CreditBudgetStatus.model_validate(opened)
    assert accounting_to_open(spec, written, now) is None
    raised = spec.model_copy(update={"limit_credits": 3_000})
    assert accounting_to_open(raised, written, now) == {"remainingCredits": 3_000}
    spent = written.model_copy(update={"spent_credits": 2_500, "reserved_credits": 0})
    assert accounting_to_open(spec, spent, now) == {"remainingCredits": 0}
