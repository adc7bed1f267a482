"""Active/standby operator replicas: stand by until elected, reconcile while holding the Lease,
stop at once when it is lost.

Contract: specs/CORE-004-generation-runs.md, section "High availability".

A standby runs nothing of the operator (no watch, no handler) and answers its liveness probe
itself. The elected replica runs kopf; its Lease is renewed beside it, and when a renewal
misses its deadline or another replica holds the Lease, the process ends on the spot
(`os._exit`): a graceful stop could still write while the next leader starts. A clean stop
(SIGTERM) gives the Lease back so a standby takes over at its next look.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web

from smartspec.kube.leader import LeaderElector
from smartspec.observability import metrics
from smartspec.observability.logs import get_logger

__all__ = ["LEADERSHIP_LOST_EXIT_CODE", "run_while_leader"]

LEADERSHIP_LOST_EXIT_CODE = 3
"""Exit status of a replica that lost the Lease (the kubelet restarts it as a standby)."""
log = get_logger(__name__)


async def run_while_leader(
    elector: LeaderElector, operate: Callable[[], Awaitable[None]], liveness_port: int | None
) -> None:
    """Stand by until `elector` wins, then run `operate` (kopf) while the Lease is held."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    metrics.OPERATOR_LEADER.set(0)
    health = await _serve_standby_health(liveness_port)
    acquiring = asyncio.create_task(elector.acquire(), name="leader election")
    stopping = asyncio.create_task(stop.wait(), name="stop signal")
    try:
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (acquiring, stopping):
            task.cancel()
        if health is not None:
            await health.cleanup()  # kopf's own liveness endpoint takes the port over
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)  # kopf installs its own
    if stop.is_set():
        log.info("Stopped while standing by", identity=elector.identity)
        await elector.release()  # in case it was won in the same moment
        return
    acquiring.result()  # re-raises an unexpected failure of the election itself
    metrics.OPERATOR_LEADER.set(1)
    holding = asyncio.create_task(elector.hold(), name="lease renewal")
    holding.add_done_callback(_stop_at_once)
    try:
        await operate()
    finally:
        holding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holding
        metrics.OPERATOR_LEADER.set(0)
        await elector.release()


def _stop_at_once(holding: asyncio.Task[None]) -> None:
    if holding.cancelled():
        return
    log.error(
        "Leadership lost: stopping at once", error=str(holding.exception() or "renewal ended")
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(LEADERSHIP_LOST_EXIT_CODE)


async def _serve_standby_health(port: int | None) -> web.AppRunner | None:
    """/healthz of a standby: alive, and waiting for the Lease."""
    if not port:
        return None

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"role": "standby"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()  # noqa: S104 (a Pod's probe port)
    return runner
