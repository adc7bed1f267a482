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

from smartspec.api.manifests import ManifestError, parse_manifest
from smartspec.api.v1alpha1 import GROUP, VERSION
from smartspec.api.v1alpha1.creditbudget import PLURAL, CreditBudget, CreditBudgetStatus
from smartspec.kube.client import ConflictError, KubeClient, KubeError, custom_object_path
from smartspec.kube.events import EventRecorder
from smartspec.logic.budget import (
    accounting_to_open,
    budget_conditions,
    invalid_budget_condition,
)
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
            budget = parse_manifest(body, "CreditBudget")
        except ManifestError as error:
            log.warning("CreditBudget does not parse", problems=error.problems)
            outcome.value = "invalid"
            await _report_invalid(body, patch, error, context)
            return
        assert isinstance(budget, CreditBudget)  # noqa: S101 (parse_manifest dispatches on kind)
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


async def _report_invalid(
    body: kopf.Body, patch: kopf.Patch, error: ManifestError, context: BudgetContext
) -> None:
    """Ready=False naming what is wrong, and one Warning Event per generation: the API server
    admitted a budget the operator's types refuse (an unknown time zone), and the gateway
    refuses every call against it until it is fixed."""
    condition_type, value, reason, message = invalid_budget_condition(error.fields, error.problems)
    raw = body.get("status") or {}
    try:
        conditions = CreditBudgetStatus.model_validate(raw).conditions
    except ValidationError:
        conditions = []
    generation = body.get("metadata", {}).get("generation")
    wanted = set_condition(
        conditions,
        condition_type=condition_type,
        status=value,
        reason=reason,
        message=message,
        observed_generation=generation,
        now=datetime.now(UTC),
    )
    stored = {"conditions": [condition.to_wire() for condition in conditions]}
    written = {"conditions": [condition.to_wire() for condition in wanted]}
    if status_changes(stored, written):
        patch.status["conditions"] = written["conditions"]
        patch.status["observedGeneration"] = generation
    await context.events.record(
        body, EventRecord("Warning", reason, message), transition=f"invalid:{generation}"
    )


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
