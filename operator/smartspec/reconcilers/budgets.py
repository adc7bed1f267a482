"""kopf handler for `CreditBudget`: conditions and Events from the gateway's accounting.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Budget conditions".

The gateway writes the accounting (spent, leases, thresholds crossed); this handler is the
only writer of the conditions. It reacts to every change of the object, status included, and
writes only when a condition changes, so its own write does not loop.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from smartspec.api.v1alpha1 import GROUP, VERSION
from smartspec.api.v1alpha1.creditbudget import PLURAL, CreditBudget, CreditBudgetStatus
from smartspec.logic.budget import budget_conditions
from smartspec.logic.conditions import find_condition, set_condition
from smartspec.observability import metrics
from smartspec.observability.logs import get_logger
from smartspec.reconcilers.scope import reconcile_scope

HANDLER_ID = "budget-conditions"
log = get_logger(__name__)


def register_budget_handlers(registry: kopf.OperatorRegistry) -> None:
    """Register on an explicit registry (no import-time side effects)."""

    @kopf.on.event(GROUP, VERSION, PLURAL, id=HANDLER_ID, registry=registry)
    def on_event(*, body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        # kopf passes the watch event's type as `type`.
        if kwargs.get("type") == "DELETED" or body.metadata.get("deletionTimestamp"):
            return
        reconcile_budget(body, patch)


def reconcile_budget(body: kopf.Body, patch: kopf.Patch) -> None:
    """Set conditions from the accounting; post an Event for each condition that turned."""
    with reconcile_scope("CreditBudget", body, "budget") as outcome:
        try:
            budget = CreditBudget.model_validate(dict(body))
        except ValidationError as error:
            log.warning("CreditBudget does not parse", error=str(error))
            outcome.value = "invalid"
            return
        status = budget.status or CreditBudgetStatus()
        now = datetime.now(UTC)
        conditions = list(status.conditions)
        for condition_type, value, reason, message in budget_conditions(budget.spec, status):
            before = find_condition(conditions, condition_type)
            conditions = set_condition(
                conditions,
                condition_type=condition_type,
                status=value,
                reason=reason,
                message=message,
                observed_generation=budget.metadata.generation,
                now=now,
            )
            turned = before is None or (before.status, before.message) != (value, message)
            if turned and value == "True" and condition_type != "Ready":
                kopf.warn(body, reason=reason, message=message)
                metrics.BUDGET_ALERTS.labels(condition=condition_type).inc()
                log.warning("Budget condition", condition=condition_type, message=message)
        wire = [condition.to_wire() for condition in conditions]
        if wire != [condition.to_wire() for condition in status.conditions]:
            patch.status["conditions"] = wire
            patch.status["observedGeneration"] = budget.metadata.generation
