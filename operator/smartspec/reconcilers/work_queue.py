"""A work queue for level-triggered reconciles: events and deadlines in, one worker per key.

Contract: specs/CORE-004-generation-runs.md, section "Reconciler".

Events (the object changed, one of its Jobs or Pods changed) and deadlines (a reconcile
asked to look again at a time) both just name a key. A key is queued at most once however
many events name it; no two workers ever work on one key; a key named again while it is
being worked on is worked on once more afterwards, so no change is lost; one heap holds
every deadline, so waiting costs nothing per object. A failed reconcile is retried with
exponential backoff. The work itself reads the current state, so it never depends on what
the event said.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from smartspec.observability.logs import get_logger

__all__ = ["WorkQueue"]

K = TypeVar("K", bound=Hashable)
log = get_logger(__name__)

MAX_BACKOFF_SECONDS = 60.0
FIRST_BACKOFF_SECONDS = 0.5


class WorkQueue(Generic[K]):
    """Keys to work on by `workers` concurrent tasks; `work(key)` returns when to look again
    (seconds from now) or None."""

    def __init__(
        self,
        work: Callable[[K], Awaitable[float | None]],
        *,
        workers: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError("a work queue needs at least one worker")
        self._work = work
        self._workers = workers
        self._clock = clock
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._again: set[K] = set()
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._order = itertools.count()
        self._failures: dict[K, int] = {}
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        """Keys queued, being worked on, or waiting for a deadline."""
        return len(self._queued | self._active | set(self._due))

    def add(self, key: K) -> None:
        """Work on `key` soon (once, however often it is added before a worker takes it)."""
        if key in self._active:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.put_nowait(key)

    def add_after(self, key: K, seconds: float) -> None:
        """Work on `key` in `seconds` (the earliest of several such deadlines wins)."""
        due = self._clock() + max(0.0, seconds)
        if self._due.get(key, float("inf")) <= due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, next(self._order), key))
        self._wake.set()

    def forget(self, key: K) -> None:
        """Drop deadlines and retries of a key that is gone (an event may still add it)."""
        self._due.pop(key, None)
        self._failures.pop(key, None)
        self._again.discard(key)

    async def run(self) -> None:
        """Serve until cancelled."""
        tasks = [asyncio.create_task(self._worker()) for _ in range(self._workers)]
        tasks.append(asyncio.create_task(self._timer()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _worker(self) -> None:
        while True:
            key = await self._ready.get()
            self._queued.discard(key)
            self._active.add(key)
            try:
                delay = await self._work(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure: retry, never lose the key
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** (failures - 1))
                log.warning(
                    "Reconcile failed; will retry",
                    key=str(key),
                    error=f"{type(error).__name__}: {error}",
                    retry_seconds=delay,
                )
            finally:
                self._active.discard(key)
            if key in self._again:
                self._again.discard(key)
                self.add(key)
            elif delay is not None:
                self.add_after(key, delay)

    async def _timer(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            while self._heap and self._heap[0][0] <= now:
                due, _, key = heapq.heappop(self._heap)
                if self._due.get(key) == due:  # else superseded or forgotten
                    del self._due[key]
                    self.add(key)
            timeout = self._heap[0][0] - now if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
