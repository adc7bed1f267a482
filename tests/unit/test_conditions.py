"""Condition bookkeeping (specs/CORE-001-resources.md, "Conditions")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from smartspec.logic.conditions import find_condition, is_condition_true, set_condition
from smartspec.logic.status_patch import status_changes

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_new_condition_takes_the_current_time() -> None:
    conditions = set_condition(
        [],
        condition_type="Ready",
        status="True",
        reason="Ok",
        message="",
        observed_generation=1,
        now=T0,
    )
    assert conditions[0].last_transition_time == T0
    assert is_condition_true(conditions, "Ready")


def test_same_status_keeps_transition_time_but_updates_message() -> None:
    first = set_condition(
        [],
        condition_type="Ready",
        status="False",
        reason="A",
        message="one",
        observed_generation=1,
        now=T0,
    )
    second = set_condition(
        first,
        condition_type="Ready",
        status="False",
        reason="B",
        message="two",
        observed_generation=2,
        now=T1,
    )
    condition = find_condition(second, "Ready")
    assert condition is not None
    assert (condition.last_transition_time, condition.reason, condition.message) == (T0, "B", "two")
    assert condition.observed_generation == 2


def test_status_change_moves_transition_time_and_keeps_order() -> None:
    conditions = set_condition(
        [],
        condition_type="Valid",
        status="True",
        reason="A",
        message="",
        observed_generation=1,
        now=T0,
    )
    conditions = set_condition(
        conditions,
        condition_type="Ready",
        status="False",
        reason="B",
        message="",
        observed_generation=1,
        now=T0,
    )
    updated = set_condition(
        conditions,
        condition_type="Valid",
        status="False",
        reason="C",
        message="",
        observed_generation=1,
        now=T1,
    )
    assert [c.type for c in updated] == ["Valid", "Ready"]
    assert updated[0].last_transition_time == T1
    assert conditions[0].status == "True", "the input list is not mutated"


def test_missing_condition_is_not_true() -> None:
    assert not is_condition_true([], "Ready")


def test_a_status_write_sends_what_changed_and_removes_what_is_gone() -> None:
    before = {"phase": "Generating", "attempt": 1, "progress": {"done": 1}, "usage": {"calls": 2}}
    after = {"phase": "Testing", "attempt": 1}
    assert status_changes(before, after, others=frozenset({"usage"})) == {
        "phase": "Testing",
        "progress": None,
    }
    assert status_changes(after, after) == {}, "nothing changed: nothing to write"
