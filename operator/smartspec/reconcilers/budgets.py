"""kopf handler for `CreditBudget`: conditions and Events from the gateway's accounting.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Budget conditions".

The gateway writes the accounting (spent, leases, thresholds crossed); this handler is the
only writer of the conditions. It reacts to every change of the object, status included, and
writes only when a condition changes, so its own write does not loop. It also opens the
accounting of a budget no gateway has written yet (0 spent, the whole limit remaining, the
current period) and keeps remainingCredits current when the limit changes: one
compare-and-swap write, so it never overwrites a gateway write that came first.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from smartspec.api.v1alpha1 import GROUP, VERSION
from smartspec.api.v1alpha1.creditbudget import PLURAL, CreditBudget, CreditBudgetStatus
from smartspec.kube.client import ConflictError, KubeClient, KubeError, custom_object_path
from smartspec.kube.events import EventRecorder
from smartspec.logic.budget import accounting_to_open, budget_conditions
from smartspec.logic.conditions import find_condition, set_condition
from smartspec.logic.events import EventRecord
from smartspec.logic.status_patch import status_changes
from smartspec.observability import metrics
from smartspec.observability.logs import get_logger
from smartspec.reconcilers.scope import reconcile_scope

HANDLER_ID = "budget-conditions"
log = get_logger(__name__)


@dataclass(frozen=True)
class BudgetContext:
    """What the budget handler needs from the process."""

    kube: KubeClient
    events: EventRecorder


def register_budget_handlers(registry: kopf.OperatorRegistry, context: BudgetContext) -> None:
    """Register on an explicit registry (no import-time side effects)."""

    @kopf.on.event(GROUP, VERSION, PLURAL, id=HANDLER_ID, registry=registry)
    async def on_event(*, body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        # kopf passes the watch event's type as `type`.
        if kwargs.get("type") == "DELETED" or body.metadata.get("deletionTimestamp"):
            return
        await reconcile_budget(body, patch, context)


async def reconcile_budget(body: kopf.Body, patch: kopf.Patch, context: BudgetContext) -> None:
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
        await _open_accounting(body, budget, now, context)
        conditions = list(status.conditions)
        period = status.period_start.isoformat() if status.period_start else "unopened"
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
                metrics.BUDGET_ALERTS.labels(condition=condition_type).inc()
                log.warning("Budget condition", condition=condition_type, message=message)
                # Once per period: the next period may cross the same threshold again.
                await context.events.record(
                    body, EventRecord("Warning", reason, message), transition=period
                )
        stored = {"conditions": [condition.to_wire() for condition in status.conditions]}
        wanted = {"conditions": [condition.to_wire() for condition in conditions]}
        if status_changes(stored, wanted):
            # Only when a condition changed: this write must not loop on its own event.
            patch.status["conditions"] = wanted["conditions"]
            patch.status["observedGeneration"] = budget.metadata.generation


async def _open_accounting(
    body: kopf.Body, budget: CreditBudget, now: datetime, context: BudgetContext
) -> None:
    fields = accounting_to_open(budget.spec, budget.status, now)
    if fields is None:
        return
    metadata = body.get("metadata", {})
    path = custom_object_path(PLURAL, metadata["namespace"], metadata["name"], "status")
    patch = {"metadata": {"resourceVersion": metadata["resourceVersion"]}, "status": fields}
    try:
        await context.kube.merge_patch(path, patch)
    except ConflictError:
        # The object changed since this read (a gateway wrote first): the watch event of
        # that change brings this handler back with the new status.
        log.debug("Budget changed before the accounting was opened")
        return
    except KubeError as error:
        raise kopf.TemporaryError(
            f"cannot open the budget's accounting: {error}", delay=5
        ) from error
    log.info("Opened the budget's accounting", fields=sorted(fields))
