"""Leader election: take, keep and give back one coordination.k8s.io Lease.

Contract: specs/CORE-004-generation-runs.md, section "High availability". The decisions
(who may take the Lease, what a claim writes) are pure, in `smartspec.logic.leader`; this
module only reads and writes the Lease, each write a compare-and-swap on its
resourceVersion, so two replicas can never both succeed in taking it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from smartspec.kube.client import ConflictError, KubeClient, KubeError, NotFoundError
from smartspec.logic.leader import (
    LeaderTimings,
    claim,
    is_free,
    parse_lease,
    release,
    to_lease_spec,
)
from smartspec.observability.logs import get_logger

__all__ = ["LeaderElector", "LeadershipLostError"]

log = get_logger(__name__)


class LeadershipLostError(RuntimeError):
    """The Lease could not be renewed in time, or another replica holds it now."""


class LeaderElector:
    """One replica's side of the election for the Lease `namespace/name`."""

    def __init__(
        self,
        kube: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        timings: LeaderTimings,
    ) -> None:
        self.kube = kube
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self.collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.name = name
        self.identity = identity
        self.timings = timings
        self._observed: tuple[dict[str, Any], float] | None = None
        """The Lease spec last seen and when (monotonic) it was first seen like that."""
        self._body: dict[str, Any] | None = None
        """The Lease as last read or written (its resourceVersion guards the next write)."""

    async def acquire(self) -> None:
        """Return once this replica holds the Lease (waits as a standby until then)."""
        waiting_logged = False
        while True:
            try:
                if await self._try_claim():
                    log.info("Leader election won", lease=self.name, identity=self.identity)
                    return
            except KubeError as error:
                log.warning(
                    "Leader election: the Lease could not be read or written",
                    lease=self.name,
                    error=str(error),
                )
            if not waiting_logged and self._body is not None:
                holder = (self._body.get("spec") or {}).get("holderIdentity")
                log.info("Standing by", lease=self.name, holder=holder, identity=self.identity)
                waiting_logged = True
            await asyncio.sleep(self.timings.retry_seconds)

    async def hold(self) -> None:
        """Renew the Lease until cancelled; raises LeadershipLostError when another replica holds
        it, or when no renewal succeeded for `renew_deadline_seconds`."""
        last_renewal = time.monotonic()
        deadline = self.timings.renew_deadline_seconds
        while True:
            await asyncio.sleep(self.timings.retry_seconds)
            # A renewal still waiting on a slow API server must not outlast the deadline:
            # a standby may take the Lease once a whole lease passed without one.
            left = deadline - (time.monotonic() - last_renewal)
            try:
                held = await asyncio.wait_for(self._try_claim(), timeout=max(left, 0.0))
            except TimeoutError:
                raise LeadershipLostError(
                    f"the Lease {self.name} was not renewed within {deadline} s"
                ) from None
            except KubeError as error:
                late = time.monotonic() - last_renewal
                log.warning(
                    "Lease renewal failed",
                    lease=self.name,
                    error=str(error),
                    seconds_since_renewal=round(late, 1),
                )
                if late >= deadline:
                    raise LeadershipLostError(
                        f"the Lease {self.name} was not renewed for {late:.1f} s"
                        f" (deadline {deadline} s): {error}"
                    ) from error
                continue
            if not held:
                raise LeadershipLostError(f"the Lease {self.name} is held by another replica")
            last_renewal = time.monotonic()

    async def release(self) -> None:
        """Give the Lease up (on a clean stop), so that a standby need not wait it out."""
        body = self._body
        if body is None:
            return
        record = parse_lease(body.get("spec") or {})
        if record.holder != self.identity:
            return
        released = to_lease_spec(release(record, datetime.now(UTC)))
        try:
            await self.kube.put(self.path, {**body, "spec": released})
            log.info("Lease released", lease=self.name, identity=self.identity)
        except KubeError as error:  # a standby takes over when it expires instead
            log.warning("Lease release failed", lease=self.name, error=str(error))

    async def _try_claim(self) -> bool:
        """Read the Lease and write this replica in as holder if it may; True when it holds
        the Lease afterwards. A lost compare-and-swap is a "no" for this round."""
        now = datetime.now(UTC)
        try:
            body = await self.kube.get(self.path)
        except NotFoundError:
            record = claim(None, self.identity, now, self.timings)
            new = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name},
                "spec": to_lease_spec(record),
            }
            try:
                self._body = await self.kube.post(self.collection, new)
            except ConflictError:  # another replica created it first
                return False
            return True
        self._body = body
        spec = body.get("spec") or {}
        record = parse_lease(spec)
        if not is_free(record, self.identity, self._unchanged_for(spec)):
            return False
        try:
            self._body = await self.kube.put(
                self.path,
                {**body, "spec": to_lease_spec(claim(record, self.identity, now, self.timings))},
            )
        except ConflictError:  # someone wrote it since the read: look again next round
            return False
        return True

    def _unchanged_for(self, spec: dict[str, Any]) -> float:
        """Seconds this replica has seen exactly this Lease spec (0 when it just changed)."""
        now = time.monotonic()
        if self._observed is None or self._observed[0] != spec:
            self._observed = (spec, now)
        return now - self._observed[1]
