"""At most one task per key: callers that come while it runs share its result.

Contract: specs/CORE-003-gateway-and-budgets.md, section "Budget accounting" (reads of a run
or a budget, and lease writes, are shared by every call that needs them at once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """One running future per key; it is forgotten as soon as it finishes."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[T]] = {}

    def start(self, key: K, work: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        """The future running for `key`, or a new one running `work()`.

        Callers await it through `asyncio.shield`, so one caller giving up does not cancel
        the work the others wait for.
        """
        running = self._running.get(key)
        if running is None:
            running = asyncio.ensure_future(work())
            self._running[key] = running
            running.add_done_callback(lambda done: self._finished(key, done))
        return running

    def running(self, key: K) -> bool:
        return key in self._running

    def _finished(self, key: K, done: asyncio.Future[T]) -> None:
        self._running.pop(key, None)
        if not done.cancelled():
            # Retrieved here so that work started ahead of need, which nobody awaits, does
            # not log "exception never retrieved"; callers that await it still get it.
            done.exception()
