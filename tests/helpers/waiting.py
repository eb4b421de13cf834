"""Waiting on a condition that another task or process makes true (never a fixed sleep)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def until(
    predicate: Callable[[], Awaitable[object] | object], timeout_s: float = 60.0
) -> None:
    """Poll `predicate` (a coroutine function or a plain one) every 50 ms until it is truthy;
    AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = predicate()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


async def at_least(value: Callable[[], int | Awaitable[int]], minimum: int) -> bool:
    """`value() >= minimum` (awaited when it is a coroutine), and False while `value` raises
    (its store is down)."""
    try:
        got = value()
        if inspect.isawaitable(got):
            got = await got
        return got >= minimum
    except Exception:
        return False
