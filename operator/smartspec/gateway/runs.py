"""Whether a run token's GenerationRun may call models now, read through a short cache.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Run tokens".
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from smartspec.api.gateway import RefusalCode
from smartspec.gateway.errors import GatewayError
from smartspec.gateway.router import UpstreamError
from smartspec.gateway.single_flight import SingleFlight
from smartspec.kube.client import KubeClient, KubeError, custom_object_path
from smartspec.logic.refusals import Refusal
from smartspec.logic.run_tokens import RunTokenClaims
from smartspec.observability import metrics
from smartspec.observability.logs import get_logger

_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
MAX_RECORDED_REFUSALS = 10_000
log = get_logger(__name__)
Cached = tuple[float, dict[str, Any]]


@dataclass
class RunCache:
    """GenerationRuns by (namespace, name), each read at most once per `ttl_seconds`."""

    kube: KubeClient
    ttl_seconds: float
    runs: dict[tuple[str, str], Cached] = field(default_factory=dict)
    reads: SingleFlight[tuple[str, str], Cached] = field(default_factory=SingleFlight)
    recorded_refusals: dict[tuple[str, int], RefusalCode] = field(default_factory=dict)
    """(run uid, attempt) -> the code last written to that run's status.refusal."""

    async def active_run(self, claims: RunTokenClaims) -> dict[str, Any]:
        """The token's GenerationRun, if it may still call models (else 403)."""
        key = (claims.namespace, claims.run)
        cached = self.runs.get(key)
        ttl = self.ttl_seconds
        if cached is None or time.monotonic() - cached[0] > ttl:
            # One read per run however many of its calls find the cache stale at once.
            cached = await asyncio.shield(self.reads.start(key, lambda: self._read(claims)))
        elif time.monotonic() - cached[0] > ttl / 2:
            # Read ahead, so that calls under steady load never wait for the read; a failed
            # read ahead is left for the next call past the TTL, which reads again.
            self.reads.start(key, lambda: self._read(claims))
        run = cached[1]
        problem = inactive_reason(run, claims)
        if problem is not None:
            metrics.REFUSALS.labels(reason=problem[0]).inc()
            raise GatewayError(403, "permission_error", problem[1], problem[0])
        return run

    async def record_refusal(self, claims: RunTokenClaims, refusal: Refusal) -> None:
        """Write the refusal to the run's status.refusal before the caller is answered, once
        per attempt and code (an agent that retries a refused call costs no more writes).
        A failed write is logged: the refusal itself stands either way."""
        key = (claims.run_uid, claims.attempt)
        if self.recorded_refusals.get(key) is refusal.code:
            return
        path = custom_object_path("generationruns", claims.namespace, claims.run, "status")
        patch = {
            # A uid in a patch is a precondition: a run re-created under the name is not
            # written.
            "metadata": {"uid": claims.run_uid},
            "status": {
                "refusal": {
                    "attempt": claims.attempt,
                    "code": refusal.code.value,
                    "message": refusal.message[:1024],
                    "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            },
        }
        try:
            await self.kube.merge_patch(path, patch)
        except KubeError as error:
            log.warning("Could not record the refusal on the run", run=claims.run, error=str(error))
            return
        if len(self.recorded_refusals) > MAX_RECORDED_REFUSALS:
            self.recorded_refusals.clear()
        self.recorded_refusals[key] = refusal.code

    def forget_stale(self, seconds: float = 60) -> None:
        """Forget runs not asked about for a while (finished runs, mostly)."""
        now = time.monotonic()
        for key in [key for key, (read_at, _) in self.runs.items() if now - read_at > seconds]:
            self.runs.pop(key, None)

    async def _read(self, claims: RunTokenClaims) -> Cached:
        path = custom_object_path("generationruns", claims.namespace, claims.run)
        try:
            body = await self.kube.get(path)
        except KubeError as error:
            if error.status == 404:
                raise GatewayError(
                    403,
                    "permission_error",
                    f"GenerationRun {claims.namespace}/{claims.run} does not exist",
                    "run_not_found",
                ) from None
            raise GatewayError(
                503, "service_unavailable", f"cannot read the run: {error}", "kube_unavailable"
            ) from None
        cached = (time.monotonic(), body)
        self.runs[(claims.namespace, claims.run)] = cached
        return cached


def local_endpoint(run: dict[str, Any], claims: RunTokenClaims) -> str:
    """The model server of the token's attempt, as the operator recorded it on the run."""
    attempts: list[dict[str, Any]] = (run.get("status") or {}).get("attempts") or []
    current: dict[str, Any] = next((a for a in attempts if a.get("number") == claims.attempt), {})
    endpoint = current.get("modelEndpoint")
    if not endpoint:
        # Raised as an upstream failure so the held reservation is released.
        raise UpstreamError(
            "local_model_not_ready",
            503,
            f"attempt {claims.attempt} of {claims.run} has no local model server yet",
        )
    return str(endpoint)


def inactive_reason(run: dict[str, Any], claims: RunTokenClaims) -> tuple[str, str] | None:
    """Why this run may not call models now (code, message), or None when it may."""
    metadata, spec = run.get("metadata") or {}, run.get("spec") or {}
    status = run.get("status") or {}
    name = f"{claims.namespace}/{claims.run}"
    attempt = status.get("attempt")
    checks = [
        (
            metadata.get("uid") != claims.run_uid,
            "run_replaced",
            f"the token is for an earlier GenerationRun named {name}",
        ),
        (bool(metadata.get("deletionTimestamp")), "run_deleted", f"{name} is being deleted"),
        (bool(spec.get("suspend")), "run_suspended", f"GenerationRun {name} is suspended"),
        (
            status.get("phase") in _TERMINAL_PHASES,
            "run_finished",
            f"GenerationRun {name} has finished ({status.get('phase')})",
        ),
        (
            isinstance(attempt, int) and attempt != claims.attempt,
            "attempt_mismatch",
            f"the token is for attempt {claims.attempt}; {name} is on attempt {attempt}",
        ),
        (
            (spec.get("replayOf") or {}).get("name") != claims.replay_of,
            "replay_mismatch",
            f"the token's replay source does not match GenerationRun {name}",
        ),
    ]
    return next(((code, message) for failed, code, message in checks if failed), None)
