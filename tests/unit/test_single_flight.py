"""One task per key (specs/CORE-003-gateway-and-budgets.md, "Budget accounting")."""

from __future__ import annotations

import asyncio
import gc

import pytest

from smartspec.gateway.single_flight import SingleFlight


async def test_callers_share_the_running_task_and_a_new_one_starts_after() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    started = 0
    release = asyncio.Event()

    async def work() -> int:
        nonlocal started
        started += 1
        await release.wait()
        return started

    first = flights.start("k", work)
    second = flights.start("k", work)
    assert first is second
    assert flights.running("k")
    release.set()
    assert list(await asyncio.gather(asyncio.shield(first), asyncio.shield(second))) == [1, 1]
    assert not flights.running("k"), "a finished task is forgotten"
    assert await flights.start("k", work) == 2
    assert await flights.start("other", work) == 3, "keys are independent"


async def test_a_failure_reaches_the_callers_and_is_not_reported_as_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flights: SingleFlight[str, int] = SingleFlight()

    async def fail() -> int:
        raise RuntimeError("read failed")

    awaited = flights.start("k", fail)
    with pytest.raises(RuntimeError, match="read failed"):
        await asyncio.shield(awaited)
    ahead = flights.start("k", fail)  # started ahead of need: nobody awaits it
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert ahead.done()
    assert not flights.running("k")
    del ahead, awaited
    gc.collect()
    assert "never retrieved" not in caplog.text
