"""Gateway refusals name what binds, with figures that agree (specs/CORE-003, "Refusals")."""

from __future__ import annotations

import pytest

from smartspec.api.gateway import Constraint, RefusalCode
from smartspec.api.sandbox import parse_result_line
from smartspec.api.v1alpha1.creditbudget import ModelPolicy
from smartspec.logic.refusals import (
    BudgetFigures,
    CallNeed,
    budget_refusal,
    model_refusal,
    run_cap,
    run_cap_refusal,
)

NEED = CallNeed(
    requested_credits=1_933,
    required_credits=745,
    min_completion_tokens=16,
    prompt_token_bound=4_886,
)


def figures(limit: int, spent: int, held: int) -> BudgetFigures:
    return BudgetFigures("team-a", "default", limit, spent, held, "Monthly period from X (UTC)")


def test_a_budget_with_credits_left_names_its_remaining_credits() -> None:
    refusal = budget_refusal(figures(2_000, 1_500, 100), NEED)
    assert (refusal.code, refusal.constraint, refusal.http_status) == (
        RefusalCode.BUDGET_EXHAUSTED,
        Constraint.BUDGET_REMAINING,
        402,
    )
    assert refusal.figures["remaining_credits"] == 400 < refusal.figures["required_credits"]
    assert refusal.message == (
        "CreditBudget team-a/default has 400 of 2000 credits left in its Monthly period from X "
        "(UTC) (1500 spent, 100 held for calls in flight); this call needs at least 745 credits "
        "(16 completion tokens and a prompt of up to 4886 tokens; 1933 at the max_tokens asked "
        "for)"
    )


@pytest.mark.parametrize("spent", [2_000, 2_500])
def test_a_spent_period_is_named_as_such(spent: int) -> None:
    refusal = budget_refusal(figures(2_000, spent, 0), NEED)
    assert refusal.constraint is Constraint.PERIOD_EXHAUSTED
    assert refusal.figures["remaining_credits"] == 0
    assert refusal.message.startswith(
        "CreditBudget team-a/default has spent all 2000 credits of its Monthly period"
    )


def test_the_tighter_cap_binds_and_is_named() -> None:
    cap = run_cap(max_credits=20_000, per_run_limit=1_500, budget="default", spent=1_000, held=10)
    assert cap is not None
    assert (cap.cap_credits, cap.room) == (1_500, 490)
    refusal = run_cap_refusal("team-a/run-1", cap, NEED)
    assert (refusal.code, refusal.constraint) == (RefusalCode.RUN_CAP_REACHED, Constraint.RUN_CAP)
    assert "may spend 1500 credits (perRunLimitCredits of CreditBudget default)" in refusal.message
    assert "it has spent 1000 and holds 10 for calls in flight, so 490 are left" in refusal.message
    assert run_cap(None, None, "default", 0, 0) is None
    own = run_cap(max_credits=5, per_run_limit=1_500, budget="default", spent=0, held=0)
    assert own is not None
    assert own.source == "spec.maxCredits of the run"


def test_a_cap_already_passed_shows_nothing_left() -> None:
    cap = run_cap(max_credits=100, per_run_limit=None, budget="default", spent=120, held=0)
    assert cap is not None
    assert cap.room == -20
    assert run_cap_refusal("team-a/run-1", cap, NEED).figures["remaining_credits"] == 0


def test_a_model_refusal_names_the_pattern_that_decides() -> None:
    denied = model_refusal("ns", "b", ModelPolicy(allow=["*"], deny=["gpt-4*"]), "gpt-4o")
    assert denied.http_status == 403
    assert denied.message.endswith("it matches the deny pattern 'gpt-4*'")
    unlisted = model_refusal("ns", "b", ModelPolicy(allow=["local/*", "stub-*"]), "gpt-4o")
    assert unlisted.message.endswith("it matches no allow pattern ('local/*', 'stub-*')")


def test_the_result_line_is_read_from_the_end_of_a_termination_message() -> None:
    message = (
        "smartspec-generator: read spec\n"
        '{"result": "GenerationFailed", "detail": {"message": "refused", '
        '"refusal": "run_cap_reached", "usage": {"calls": 0}}}\n'
    )
    line = parse_result_line(message)
    assert line is not None
    assert (line.result, line.detail.message, line.detail.refusal) == (
        "GenerationFailed",
        "refused",
        RefusalCode.RUN_CAP_REACHED,
    )
    assert parse_result_line("Traceback (most recent call last):\n  boom") is None
    assert parse_result_line('{"result": "x", "detail": {"refusal": "no-such-code"}}') is None
