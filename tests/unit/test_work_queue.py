"""The reconcilers' work queue (specs/CORE-004-generation-runs.md, "Reconciler")."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from smartspec.reconcilers.work_queue import WorkQueue


@contextlib.asynccontextmanager
async def serving(queue: WorkQueue[str]) -> AsyncIterator[None]:
    task = asyncio.create_task(queue.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool]) -> None:
    """Poll the condition (the queue's own tasks make it true), for at most 5 s."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - nothing to wait on but the condition
            await asyncio.sleep(0.005)


async def test_a_key_added_many_times_before_a_worker_takes_it_is_worked_on_once() -> None:
    seen: Counter[str] = Counter()

    async def work(key: str) -> None:
        seen[key] += 1

    queue = WorkQueue(work, workers=4)
    for _ in range(50):
        queue.add("a")
    queue.add("b")
    async with serving(queue):
        await until(lambda: seen["a"] > 0 and seen["b"] > 0)
        await asyncio.sleep(0.05)
    assert seen == Counter({"a": 1, "b": 1})


async def test_no_two_workers_work_on_one_key_and_a_change_meanwhile_is_not_lost() -> None:
    running: Counter[str] = Counter()
    overlaps = 0
    done: list[str] = []
    release = asyncio.Event()

    async def work(key: str) -> None:
        nonlocal overlaps
        running[key] += 1
        overlaps += running[key] > 1
        if not done:
            await release.wait()
        running[key] -= 1
        done.append(key)

    queue = WorkQueue(work, workers=4)
    queue.add("run")
    async with serving(queue):
        await until(lambda: running["run"] == 1)
        queue.add("run")  # an event while the first reconcile is still going
        queue.add("run")
        release.set()
        await until(lambda: len(done) == 2)
        await asyncio.sleep(0.05)
    assert overlaps == 0
    assert done == ["run", "run"], "worked on once more, not twice more"


async def test_deadlines_wake_keys_in_order_and_the_earliest_wins() -> None:
    order: list[str] = []

    async def work(key: str) -> None:
        order.append(key)

    queue = WorkQueue(work, workers=1)
    queue.add_after("late", 0.2)
    queue.add_after("early", 0.05)
    queue.add_after("late", 0.1)  # earlier than its first deadline: replaces it
    queue.add_after("early", 5)  # later than its deadline: ignored
    async with serving(queue):
        await until(lambda: len(order) == 2)
        await asyncio.sleep(0.3)
    assert order == ["early", "late"], "each once, at its earliest deadline"


async def test_a_reconcile_asks_for_its_next_look_and_a_failure_is_retried() -> None:
    calls: Counter[str] = Counter()

    async def work(key: str) -> float | None:
        calls[key] += 1
        if key == "flaky" and calls[key] == 1:
            raise RuntimeError("the API server is away")
        return 0.01 if key == "pending" and calls[key] < 3 else None

    queue = WorkQueue(work, workers=2)
    queue.add("pending")
    queue.add("flaky")
    async with serving(queue):
        await until(lambda: calls["pending"] == 3 and calls["flaky"] == 2)
        await asyncio.sleep(0.1)
    assert calls == Counter({"pending": 3, "flaky": 2})


async def test_a_forgotten_key_loses_its_deadline() -> None:
    calls: Counter[str] = Counter()

    async def work(key: str) -> None:
        calls[key] += 1

    queue = WorkQueue(work, workers=1)
    queue.add_after("gone", 0.05)
    queue.forget("gone")
    async with serving(queue):
        await asyncio.sleep(0.15)
    assert calls == Counter()
    assert len(queue) == 0


def test_a_queue_needs_a_worker() -> None:
    async def work(key: str) -> None:
        return None

    with pytest.raises(ValueError, match="at least one worker"):
        WorkQueue(work, workers=0)
