"""One call's credits: grant, clamp, refuse, charge (specs/CORE-003, "Budget accounting" and
"Streaming")."""

from __future__ import annotations

import pytest

from smartspec.api.v1alpha1.creditbudget import CreditBudgetSpec, CreditBudgetStatus
from smartspec.logic.budget import credits_left, remaining_credits
from smartspec.logic.pricing import ModelPrice, cost_credits
from smartspec.logic.refusals import BudgetFigures, RunCap
from smartspec.logic.spending import (
    MIN_USEFUL_COMPLETION_TOKENS,
    Charge,
    Grant,
    SettledBy,
    Streamed,
    StreamEnd,
    call_need,
    charge_for,
    charge_for_stream,
    estimated_completion_tokens,
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
    assert (reported.credits, reported.settled_by) == (cost_credits(PRICE, 40, 10), SettledBy.USAGE)
    unknown = charge_for(PRICE, held, 1_000, None)
    assert (unknown.credits, unknown.prompt_tokens, unknown.completion_tokens) == (
        1_350,
        1_000,
        2_000,
    )
    assert unknown.settled_by is SettledBy.RESERVATION


# ------------------------------------------------------------------ streamed answers

PROMPT_BOUND = 1_000
HELD = Grant(cost_credits(PRICE, PROMPT_BOUND, 2_000), 2_000)


@pytest.mark.parametrize(
    ("generated_bytes", "generated_chunks", "max_tokens", "tokens"),
    [
        (0, 0, 2_000, 0),  # nothing arrived: the prompt alone is charged
        (43, 11, 2_000, 43),  # one token per byte at most (byte-level BPE)
        (3, 5, 2_000, 5),  # a chunk carries a token even when its text is short
        (9_000, 2_100, 2_000, 2_000),  # never above what the model may generate
        (len("日本語".encode()), 1, 2_000, 9),  # multi-byte text counts its bytes
    ],
)
def test_a_stream_without_usage_is_counted_conservatively(
    generated_bytes: int, generated_chunks: int, max_tokens: int, tokens: int
) -> None:
    streamed = Streamed(generated_bytes, generated_chunks)
    assert estimated_completion_tokens(streamed, max_tokens) == tokens


@pytest.mark.parametrize(
    ("end", "settled_by"),
    [
        (StreamEnd.FINISHED, SettledBy.ESTIMATE_NO_USAGE),
        (StreamEnd.UPSTREAM_BROKE, SettledBy.ESTIMATE_UPSTREAM_BROKE),
        (StreamEnd.CLIENT_GONE, SettledBy.ESTIMATE_CLIENT_GONE),
    ],
)
def test_a_stream_without_usage_is_charged_its_estimate_never_zero(
    end: StreamEnd, settled_by: SettledBy
) -> None:
    for streamed in (Streamed(0, 0), Streamed(120, 30), Streamed(10**6, 10**5)):
        charge = charge_for_stream(PRICE, HELD, PROMPT_BOUND, None, streamed=streamed, end=end)
        completion = estimated_completion_tokens(streamed, HELD.max_tokens)
        assert charge == Charge(
            cost_credits(PRICE, PROMPT_BOUND, completion), PROMPT_BOUND, completion, settled_by
        )
        assert 0 < charge.credits <= HELD.credits


def test_a_small_prompt_with_nothing_generated_still_costs_a_credit() -> None:
    held = Grant(cost_credits(PRICE, 16, 16), 16)
    charge = charge_for_stream(
        PRICE, held, 16, None, streamed=Streamed(), end=StreamEnd.CLIENT_GONE
    )
    assert charge.credits == cost_credits(PRICE, 16, 0) == 3


@pytest.mark.parametrize("end", list(StreamEnd))
def test_a_stream_that_carried_usage_is_charged_exactly_however_it_ended(end: StreamEnd) -> None:
    charge = charge_for_stream(
        PRICE, HELD, PROMPT_BOUND, (40, 10), streamed=Streamed(500, 100), end=end
    )
    assert charge == Charge(cost_credits(PRICE, 40, 10), 40, 10, SettledBy.USAGE)
