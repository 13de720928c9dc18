"""Bounded shutdown: a stop step that ignores cancellation (as a Kafka client can in the middle
of a rebalance) is left behind after its time, and the caller goes on."""
from __future__ import annotations

import asyncio

from shared.shutdown import cancel_all, finish_within


async def _stubborn(release: asyncio.Event) -> None:
    """Swallows every cancellation until released."""
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            continue


async def test_a_step_that_ignores_cancellation_is_left_behind_in_time():
    release = asyncio.Event()
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await finish_within(_stubborn(release), 0.2, "stubborn") is False
    assert loop.time() - began < 1.0
    # asyncio.wait_for would still be waiting here: it waits for the cancelled step to end
    release.set()


async def test_a_step_that_fails_or_finishes_is_reported():
    async def fails():
        raise RuntimeError("broker gone")

    async def quick():
        return 1

    assert await finish_within(fails(), 1, "fails") is False
    assert await finish_within(quick(), 1, "quick") is True


async def test_cancel_all_waits_for_tasks_that_end_and_not_for_those_that_do_not():
    release = asyncio.Event()
    stubborn = asyncio.create_task(_stubborn(release))
    polite = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)  # both running
    loop = asyncio.get_running_loop()
    began = loop.time()
    await cancel_all([stubborn, polite], 0.2, "tasks")
    assert loop.time() - began < 1.0
    assert polite.cancelled() and not stubborn.done()
    release.set()
    await stubborn
