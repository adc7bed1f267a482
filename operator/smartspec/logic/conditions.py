"""Condition bookkeeping with metav1.Condition semantics.

Contract: specs/CORE-001-resources.md, section "Conditions".

`lastTransitionTime` changes only when `status` changes: a reconcile that re-asserts the same
status with a new message keeps the old time, so `kubectl wait` and alerting see real
transitions, not every write. Functions return new lists and never mutate their input.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from smartspec.api.v1alpha1.common import Condition, ConditionStatus


def find_condition(conditions: Sequence[Condition], condition_type: str) -> Condition | None:
    """The condition of that type, if present."""
    return next((c for c in conditions if c.type == condition_type), None)


def is_condition_true(conditions: Sequence[Condition], condition_type: str) -> bool:
    """Whether the condition of that type is present with status True."""
    condition = find_condition(conditions, condition_type)
    return condition is not None and condition.status == "True"


def set_condition(
    conditions: Sequence[Condition],
    *,
    condition_type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    observed_generation: int | None,
    now: datetime,
) -> list[Condition]:
    """A copy of `conditions` with one condition set; others keep their order and values."""
    previous = find_condition(conditions, condition_type)
    transition_time = (
        previous.last_transition_time if previous is not None and previous.status == status else now
    )
    updated = Condition(
        type=condition_type,
        status=status,
        reason=reason,
        message=message,
        observed_generation=observed_generation,
        last_transition_time=transition_time,
    )
    result = [c for c in conditions if c.type != condition_type]
    index = next((i for i, c in enumerate(conditions) if c.type == condition_type), len(result))
    result.insert(index, updated)
    return result
