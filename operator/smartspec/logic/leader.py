"""Leader election over a coordination.k8s.io Lease: what one replica may do, decided purely.

Contract: specs/CORE-004-generation-runs.md, section "High availability".

Replicas agree through one Lease object: the holder renews it every `retry_seconds`; a
replica that cannot renew for `renew_deadline_seconds` stops at once; another takes the Lease
only after it has seen the same record, unchanged, for `lease_seconds`. Expiry is judged on
the observer's own monotonic clock (when *it* last saw the record change), never on the
holder's `renewTime`, so clock skew between nodes cannot hand the Lease to two replicas.
`renew_deadline_seconds < lease_seconds` leaves the old holder time to stop before anyone
else may start.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "LeaderTimings",
    "LeaseRecord",
    "claim",
    "is_free",
    "parse_lease",
    "release",
    "to_lease_spec",
]

MICROTIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
"""metav1.MicroTime on the wire."""


@dataclass(frozen=True)
class LeaderTimings:
    """How long a Lease lasts unrenewed, how long a holder tries to renew before it stops,
    and how often anyone looks."""

    lease_seconds: int = 15
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError(
                "leader timings need 0 < retry_seconds < renew_deadline_seconds < lease_seconds"
                f" (got {self.retry_seconds}, {self.renew_deadline_seconds},"
                f" {self.lease_seconds})"
            )


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease's spec that the election reads and writes."""

    holder: str | None
    lease_seconds: int
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int


def parse_lease(spec: dict[str, Any]) -> LeaseRecord:
    """A Lease's spec as the election sees it (absent fields: a free, never-held Lease)."""
    return LeaseRecord(
        holder=spec.get("holderIdentity") or None,
        lease_seconds=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=_parse_time(spec.get("acquireTime")),
        renew_time=_parse_time(spec.get("renewTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
    )


def to_lease_spec(record: LeaseRecord) -> dict[str, Any]:
    """The wire form of a record (a Lease's whole spec)."""
    spec: dict[str, Any] = {
        "leaseDurationSeconds": record.lease_seconds,
        "leaseTransitions": record.transitions,
    }
    if record.holder:
        spec["holderIdentity"] = record.holder
    if record.acquire_time is not None:
        spec["acquireTime"] = record.acquire_time.strftime(MICROTIME_FORMAT)
    if record.renew_time is not None:
        spec["renewTime"] = record.renew_time.strftime(MICROTIME_FORMAT)
    return spec


def is_free(record: LeaseRecord, me: str, unchanged_for_seconds: float) -> bool:
    """May `me` write itself in as holder: nobody holds it, `me` does already, or the holder
    has not renewed it for a whole lease as this replica observed it."""
    if record.holder is None or record.holder == me:
        return True
    return unchanged_for_seconds >= record.lease_seconds


def claim(
    record: LeaseRecord | None, me: str, now: datetime, timings: LeaderTimings
) -> LeaseRecord:
    """The record that makes (or keeps) `me` the holder: a renewal keeps the acquire time,
    a takeover starts a new term and counts a transition."""
    if record is not None and record.holder == me:
        return replace(record, lease_seconds=timings.lease_seconds, renew_time=now)
    transitions = 0 if record is None else record.transitions + 1
    return LeaseRecord(
        holder=me,
        lease_seconds=timings.lease_seconds,
        acquire_time=now,
        renew_time=now,
        transitions=transitions,
    )


def release(record: LeaseRecord, now: datetime) -> LeaseRecord:
    """The record a holder writes when it stops cleanly: no holder, so a standby takes over at
    its next look instead of waiting out the lease."""
    return replace(record, holder=None, lease_seconds=1, renew_time=now)


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
