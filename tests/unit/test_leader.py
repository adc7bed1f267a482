"""Leader election: who may take the Lease, what a claim, a renewal and a release write
(smartspec.logic.leader), and the elector's behaviour against an API server that hangs or
hands the Lease to another replica (smartspec.kube.leader, on a fake Lease API)."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from smartspec.kube.client import ConflictError, NotFoundError
from smartspec.kube.leader import LeaderElector, LeadershipLostError
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


class LeaseApi:
    """One Lease on a fake API server: create once, update by resourceVersion, or hang."""

    def __init__(self) -> None:
        self.body: dict[str, Any] | None = None
        self.version = 0
        self.hang = False

    async def get(self, path: str) -> dict[str, Any]:
        if self.hang:
            await asyncio.sleep(3600)
        if self.body is None:
            raise NotFoundError(404, "NotFound", path)
        return copy.deepcopy(self.body)

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.body is not None:
            raise ConflictError(409, "AlreadyExists", path)
        return self._store(body)

    async def put(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.body is not None
        if body["metadata"]["resourceVersion"] != self.body["metadata"]["resourceVersion"]:
            raise ConflictError(409, "Conflict", path)
        return self._store(body)

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.body = copy.deepcopy(body)
        self.body["metadata"] = {**body["metadata"], "resourceVersion": str(self.version)}
        return copy.deepcopy(self.body)


FAST = LeaderTimings(lease_seconds=1, renew_deadline_seconds=0.4, retry_seconds=0.05)


def elector(api: LeaseApi, identity: str) -> LeaderElector:
    kube = cast("Any", api)
    return LeaderElector(kube, namespace="ops", name="lease", identity=identity, timings=FAST)


async def test_a_standby_takes_the_lease_only_once_the_leader_stopped_renewing() -> None:
    api = LeaseApi()
    leader, standby = elector(api, "a"), elector(api, "b")
    await leader.acquire()
    assert not await standby._try_claim()  # fresh: held by a
    await asyncio.wait_for(standby.acquire(), timeout=10)  # a never renews: b takes it
    assert api.body is not None
    assert api.body["spec"]["holderIdentity"] == "b"
    assert api.body["spec"]["leaseTransitions"] == 1


async def test_a_leader_whose_renewal_hangs_gives_up_within_the_deadline() -> None:
    api = LeaseApi()
    leader = elector(api, "a")
    await leader.acquire()
    api.hang = True  # the API server stops answering
    with pytest.raises(LeadershipLostError, match="not renewed within"):
        await asyncio.wait_for(leader.hold(), timeout=10)


async def test_a_leader_that_sees_another_holder_stops() -> None:
    api = LeaseApi()
    leader = elector(api, "a")
    await leader.acquire()
    assert api.body is not None
    api.body["spec"]["holderIdentity"] = "b"
    with pytest.raises(LeadershipLostError, match="held by another replica"):
        await asyncio.wait_for(leader.hold(), timeout=10)


async def test_a_release_leaves_the_lease_free_for_the_next_look() -> None:
    api = LeaseApi()
    leader, standby = elector(api, "a"), elector(api, "b")
    await leader.acquire()
    await leader.release()
    assert api.body is not None
    assert "holderIdentity" not in api.body["spec"]
    assert await standby._try_claim()
