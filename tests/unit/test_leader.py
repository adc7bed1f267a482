"""The leader-election decisions (smartspec.logic.leader): who may take the Lease, and what a
claim, a renewal and a release write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from smartspec.logic.leader import (
    LeaderTimings,
    LeaseRecord,
    claim,
    is_free,
    parse_lease,
    release,
    to_lease_spec,
)

T0 = datetime(2026, 12, 2, 5, 0, 0, 123456, tzinfo=UTC)
TIMINGS = LeaderTimings()


def held_by(holder: str | None, transitions: int = 3) -> LeaseRecord:
    return LeaseRecord(
        holder=holder, lease_seconds=15, acquire_time=T0, renew_time=T0, transitions=transitions
    )


def test_a_lease_held_by_another_is_taken_only_after_a_whole_unchanged_lease() -> None:
    record = held_by("a")
    assert not is_free(record, "b", 0.0)
    assert not is_free(record, "b", 14.9)
    assert is_free(record, "b", 15.0)


def test_a_free_lease_or_ones_own_is_always_free() -> None:
    assert is_free(held_by(None), "b", 0.0)
    assert is_free(held_by("b"), "b", 0.0)


def test_a_takeover_starts_a_term_and_counts_a_transition() -> None:
    later = T0 + timedelta(seconds=20)
    taken = claim(held_by("a", transitions=3), "b", later, TIMINGS)
    assert taken == LeaseRecord("b", 15, later, later, 4)


def test_a_renewal_keeps_the_term_and_the_transitions() -> None:
    later = T0 + timedelta(seconds=2)
    renewed = claim(held_by("b", transitions=3), "b", later, TIMINGS)
    assert renewed == LeaseRecord("b", 15, T0, later, 3)


def test_the_first_claim_creates_term_zero() -> None:
    assert claim(None, "a", T0, TIMINGS) == LeaseRecord("a", 15, T0, T0, 0)


def test_a_release_frees_the_lease_for_the_next_look() -> None:
    later = T0 + timedelta(seconds=5)
    released = release(held_by("a"), later)
    assert released.holder is None
    assert released.lease_seconds == 1
    assert is_free(released, "b", 0.0)
    assert "holderIdentity" not in to_lease_spec(released)


def test_the_wire_form_round_trips_with_microseconds() -> None:
    record = held_by("pod-a_1234")
    spec = to_lease_spec(record)
    assert spec == {
        "holderIdentity": "pod-a_1234",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-12-02T05:00:00.123456Z",
        "renewTime": "2026-12-02T05:00:00.123456Z",
        "leaseTransitions": 3,
    }
    assert parse_lease(spec) == record


def test_a_lease_written_by_another_client_parses() -> None:
    # client-go writes these fields too, and may omit transitions and the holder.
    record = parse_lease({"leaseDurationSeconds": 15, "renewTime": "2026-12-02T05:00:00Z"})
    assert record.holder is None
    assert record.transitions == 0
    assert record.renew_time == datetime(2026, 12, 2, 5, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("retry", "deadline", "lease"), [(2, 10, 10), (0, 10, 15), (10, 10, 15), (2, 16, 15)]
)
def test_timings_that_could_give_two_leaders_are_refused(
    retry: float, deadline: float, lease: int
) -> None:
    with pytest.raises(ValueError, match="retry_seconds < renew_deadline_seconds < lease_seconds"):
        LeaderTimings(lease_seconds=lease, renew_deadline_seconds=deadline, retry_seconds=retry)
