"""One call's credits: grant, clamp, refuse, charge (specs/CORE-003, "Budget accounting")."""

from __future__ import annotations

import pytest

from smartspec.api.v1alpha1.creditbudget import CreditBudgetSpec, CreditBudgetStatus
from smartspec.logic.budget import credits_left, remaining_credits
from smartspec.logic.pricing import ModelPrice, cost_credits
from smartspec.logic.refusals import BudgetFigures, RunCap
from smartspec.logic.spending import (
    MIN_USEFUL_COMPLETION_TOKENS,
    Grant,
    SettledOn,
    call_need,
    charge_for,
    grant_within,
)

PRICE = ModelPrice("stub-model", 150_000, 600_000)


def test_every_credits_left_is_the_one_formula() -> None:
    assert credits_left(100, 30, 20) == 50
    assert credits_left(100, 90, 20) == -10, "past the ceiling it is negative"
    figures = BudgetFigures("ns", "b", 100, 90, 20, "Lifetime period")
    assert figures.remaining_credits == 0, "a figure shown is floored at 0"
    assert (
        RunCap(
            100,
            "cap",
            90,
            20,
        ).room
        == -10
    )
    spec = CreditBudgetSpec.model_validate({"limitCredits": 100})
    status = CreditBudgetStatus(spent_credits=30, reserved_credits=20)
    assert remaining_credits(spec, status) == 50


def test_a_call_the_room_covers_is_granted_whole() -> None:
    need = call_need(PRICE, 1_000, 2_000)
    assert need.requested_credits == cost_credits(PRICE, 1_000, 2_000) == 1_350
    assert need.min_completion_tokens == MIN_USEFUL_COMPLETION_TOKENS
    assert grant_within(PRICE, need, 2_000, 1_350) == Grant(1_350, 2_000)


@pytest.mark.parametrize(
    ("room", "granted_tokens"),
    [(1_349, 1_998), (1_000, 1_416), (160, 16)],
)
def test_a_call_the_room_does_not_cover_is_clamped(room: int, granted_tokens: int) -> None:
    need = call_need(PRICE, 1_000, 2_000)
    grant = grant_within(PRICE, need, 2_000, room)
    assert grant == Grant(cost_credits(PRICE, 1_000, granted_tokens), granted_tokens)
    assert grant.credits <= room < cost_credits(PRICE, 1_000, granted_tokens + 1)


@pytest.mark.parametrize("room", [159, 0, -50])
def test_below_the_smallest_useful_call_it_is_refused(room: int) -> None:
    need = call_need(PRICE, 1_000, 2_000)
    assert need.required_credits == cost_credits(PRICE, 1_000, 16) == 160
    assert grant_within(PRICE, need, 2_000, room) is None


def test_a_short_max_tokens_is_its_own_smallest_call() -> None:
    need = call_need(PRICE, 100, 4)
    assert (need.min_completion_tokens, need.required_credits) == (4, need.requested_credits)


def test_reported_usage_is_charged_and_missing_usage_costs_the_reservation() -> None:
    held = Grant(1_350, 2_000)
    reported = charge_for(PRICE, held, 1_000, (40, 10))
    assert (reported.credits, reported.settled_on) == (cost_credits(PRICE, 40, 10), SettledOn.USAGE)
    unknown = charge_for(PRICE, held, 1_000, None)
    assert (unknown.credits, unknown.prompt_tokens, unknown.completion_tokens) == (
        1_350,
        1_000,
        2_000,
    )
    assert unknown.settled_on is SettledOn.RESERVATION
