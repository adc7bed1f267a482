"""The gateway's wire codes that other components act on: refusals about budgets and policy.

Contract: specs/CORE-003-gateway-and-budgets.md, sections "Errors" and "Refusals".

The gateway writes these codes into its error bodies; the generator carries a refusal's code
to its result line, and the run reconciler chooses the run's reason from it. One spelling of
each, imported by all three.
"""

from __future__ import annotations

from enum import StrEnum


class RefusalCode(StrEnum):
    """The `error.code` of a gateway refusal about budgets and policy (stable, on the wire)."""

    BUDGET_EXHAUSTED = "budget_exhausted"
    """The budget cannot cover the smallest useful call this period."""
    RUN_CAP_REACHED = "run_cap_reached"
    """The run's own cap (maxCredits or perRunLimitCredits) cannot cover it."""
    BUDGET_NOT_FOUND = "budget_not_found"
    """The CreditBudget the run names does not exist."""
    MODEL_NOT_ALLOWED = "model_not_allowed"
    """The budget's model policy refuses the model."""


class Constraint(StrEnum):
    """What binds, as named in a refusal's body (`error.constraint`) and ledger entry."""

    BUDGET_REMAINING = "budget_remaining"
    """Credits are left this period, but fewer than the smallest useful call needs."""
    PERIOD_EXHAUSTED = "period_exhausted"
    """Every credit of this period is spent."""
    RUN_CAP = "run_cap"
    """The run's cap: the smaller of its maxCredits and the budget's perRunLimitCredits."""
    MODEL_POLICY = "model_policy"
    """The budget's model allow and deny patterns."""
    BUDGET_MISSING = "budget_missing"
    """No CreditBudget of that name."""


STRUCTURED_OUTPUT_FIELD = "structured_output"
"""The field of a `GET /v1/models` entry that says whether the model's route enforces a JSON
schema given as `response_format` (CORE-003, "Protocol"); the generator's Auto output format
reads it."""
