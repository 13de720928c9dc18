"""Bounded shutdown: a stop that hangs (a client library that does not answer cancellation in
the middle of a group rebalance, a pool whose connection is still held) must not keep a
process from exiting, nor a replica from handing its work over."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from shared.logging import get_logger

log = get_logger(__name__)


async def finish_within(step: Awaitable[object], seconds: float, what: str) -> bool:
    """Await `step` for `seconds` at most; an error is logged, not raised. True if it finished.
    Unlike `asyncio.wait_for`, giving up does not wait for the cancelled step to finish
    (a step that ignores cancellation would hang the caller all the same)."""
    task = asyncio.ensure_future(step)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        log.warning("shutdown step did not finish in time; left behind", step=what, seconds=seconds)
        return False
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("shutdown step failed", step=what, error=repr(exc))
        return False
    return True


async def cancel_all(tasks: list[asyncio.Task], seconds: float, what: str) -> None:
    """Cancel `tasks` and wait `seconds` at most for them to end."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in pending:
        log.warning("task did not end after cancellation; left behind", step=what, task=task.get_name())
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" noise


__all__ = ["cancel_all", "finish_within"]
