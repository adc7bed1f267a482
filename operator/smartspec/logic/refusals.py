"""Why the gateway refuses a call: one code per binding constraint, with numbers that agree.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Refusals".

A refusal names the constraint that actually binds and the figures behind it, and the same
`Refusal` is written to the HTTP body, the ledger entry and the warning log line; the
generator carries its code to the run, whose reason is chosen from the code (never from the
message text). Every figure in a message is computed from the others it is shown with, so a
message cannot say "2,000 left" next to "needs 1,933".
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from smartspec.api.gateway import Constraint, RefusalCode
from smartspec.api.v1alpha1.creditbudget import ModelPolicy
from smartspec.logic.budget import credits_left

__all__ = [
    "BudgetFigures",
    "CallNeed",
    "Constraint",
    "Refusal",
    "RefusalCode",
    "RunCap",
    "binding_refusal",
    "budget_refusal",
    "missing_budget_refusal",
    "model_refusal",
    "run_cap",
    "run_cap_refusal",
]


_HTTP_STATUS = {
    RefusalCode.BUDGET_EXHAUSTED: 402,
    RefusalCode.RUN_CAP_REACHED: 402,
    RefusalCode.BUDGET_NOT_FOUND: 402,
    RefusalCode.MODEL_NOT_ALLOWED: 403,
}
_ERROR_TYPE = {402: "budget_exceeded", 403: "permission_error"}


@dataclass(frozen=True)
class Refusal:
    """One refusal: its code, the binding constraint, a message and the figures in it."""

    code: RefusalCode
    constraint: Constraint
    message: str
    figures: dict[str, int] = field(default_factory=dict)
    """Credit figures by snake_case name (remaining_credits, required_credits, ...)."""

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self.code]

    @property
    def error_type(self) -> str:
        return _ERROR_TYPE[self.http_status]


@dataclass(frozen=True)
class CallNeed:
    """What one call asks for: its worst case, and the least that is still worth making."""

    requested_credits: int
    """The worst case at the max_tokens the client asked for."""
    required_credits: int
    """The worst case at the smallest useful completion (the call is clamped down to it)."""
    min_completion_tokens: int
    prompt_token_bound: int


@dataclass(frozen=True)
class BudgetFigures:
    """The budget as this replica knows it at the moment of the decision."""

    namespace: str
    budget: str
    limit_credits: int
    spent_credits: int
    """Settled this period, including what this replica settled and has not written yet."""
    held_credits: int
    """Held for calls in flight, by every replica (this one's spare lease excluded)."""
    period: str
    """The period's description, e.g. "Monthly period from 2026-12-01T00:00:00+00:00"."""

    @property
    def remaining_credits(self) -> int:
        return max(0, credits_left(self.limit_credits, self.spent_credits, self.held_credits))

    @property
    def over_limit(self) -> bool:
        """Spent and held go past the limit (only Shadow mode lets that happen)."""
        return self.spent_credits + self.held_credits > self.limit_credits


@dataclass(frozen=True)
class RunCap:
    """One run's cap and what it has committed under it."""

    cap_credits: int
    source: str
    """Which setting sets the cap, e.g. "perRunLimitCredits of CreditBudget default"."""
    spent_credits: int
    held_credits: int

    @property
    def room(self) -> int:
        """Credits the run may still commit (negative when past the cap)."""
        return credits_left(self.cap_credits, self.spent_credits, self.held_credits)


def run_cap(
    max_credits: int | None, per_run_limit: int | None, budget: str, spent: int, held: int
) -> RunCap | None:
    """The tighter of the run's maxCredits and the budget's perRunLimitCredits (None: no cap)."""
    caps = []
    if max_credits is not None:
        caps.append((max_credits, "spec.maxCredits of the run"))
    if per_run_limit is not None:
        caps.append((per_run_limit, f"perRunLimitCredits of CreditBudget {budget}"))
    if not caps:
        return None
    cap, source = min(caps, key=lambda item: item[0])
    return RunCap(cap_credits=cap, source=source, spent_credits=spent, held_credits=held)


def _needs(need: CallNeed) -> str:
    return (
        f"this call needs at least {need.required_credits} credits "
        f"({need.min_completion_tokens} completion tokens and a prompt of up to "
        f"{need.prompt_token_bound} tokens; {need.requested_credits} at the max_tokens asked for)"
    )


def _need_figures(need: CallNeed) -> dict[str, int]:
    return {
        "required_credits": need.required_credits,
        "requested_credits": need.requested_credits,
    }


def budget_refusal(figures: BudgetFigures, need: CallNeed) -> Refusal:
    """The budget binds: it cannot cover `need.required_credits`."""
    name = f"CreditBudget {figures.namespace}/{figures.budget}"
    numbers = {
        "limit_credits": figures.limit_credits,
        "spent_credits": figures.spent_credits,
        "held_credits": figures.held_credits,
        "remaining_credits": figures.remaining_credits,
        **_need_figures(need),
    }
    if figures.spent_credits >= figures.limit_credits:
        message = (
            f"{name} has spent all {figures.limit_credits} credits of its {figures.period}; "
            f"{_needs(need)}"
        )
        return Refusal(RefusalCode.BUDGET_EXHAUSTED, Constraint.PERIOD_EXHAUSTED, message, numbers)
    message = (
        f"{name} has {figures.remaining_credits} of {figures.limit_credits} credits left in "
        f"its {figures.period} ({figures.spent_credits} spent, {figures.held_credits} held for "
        f"calls in flight); {_needs(need)}"
    )
    return Refusal(RefusalCode.BUDGET_EXHAUSTED, Constraint.BUDGET_REMAINING, message, numbers)


def run_cap_refusal(run: str, cap: RunCap, need: CallNeed) -> Refusal:
    """The run's own cap binds: it cannot cover `need.required_credits`."""
    left = max(0, cap.room)
    message = (
        f"GenerationRun {run} may spend {cap.cap_credits} credits ({cap.source}); it has spent "
        f"{cap.spent_credits} and holds {cap.held_credits} for calls in flight, so {left} are "
        f"left; {_needs(need)}"
    )
    numbers = {
        "run_cap_credits": cap.cap_credits,
        "run_spent_credits": cap.spent_credits,
        "run_held_credits": cap.held_credits,
        "remaining_credits": left,
        **_need_figures(need),
    }
    return Refusal(RefusalCode.RUN_CAP_REACHED, Constraint.RUN_CAP, message, numbers)


def binding_refusal(
    run: str, cap: RunCap | None, figures: BudgetFigures, need: CallNeed
) -> Refusal:
    """The refusal of a call neither its run's cap nor the budget can cover: the cap binds
    when its room is below the smallest useful call, whatever the budget holds."""
    if cap is not None and cap.room < need.required_credits:
        return run_cap_refusal(run, cap, need)
    return budget_refusal(figures, need)


def model_refusal(namespace: str, budget: str, policy: ModelPolicy, model: str) -> Refusal:
    """The budget's model policy refuses `model`: name the pattern that decides."""
    denied_by = next((p for p in policy.deny if fnmatch.fnmatchcase(model, p)), None)
    if denied_by is not None:
        why = f"it matches the deny pattern {denied_by!r}"
    else:
        why = f"it matches no allow pattern ({', '.join(repr(p) for p in policy.allow)})"
    message = f"model {model} is not allowed by CreditBudget {namespace}/{budget}: {why}"
    return Refusal(RefusalCode.MODEL_NOT_ALLOWED, Constraint.MODEL_POLICY, message)


def missing_budget_refusal(namespace: str, budget: str) -> Refusal:
    message = f"CreditBudget {namespace}/{budget} does not exist"
    return Refusal(
        RefusalCode.BUDGET_NOT_FOUND,
        Constraint.BUDGET_MISSING,
        message,
        {"remaining_credits": 0},
    )
