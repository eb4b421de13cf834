"""The runtime's garbage-collector policy: long-lived objects are frozen out of the cyclic
collector's walks, young cyclic garbage is collected before each freeze, and the periodic full
collection unfreezes and collects what was frozen."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from cloud.gc_policy import LongLivedFreezer


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


async def _until(predicate) -> None:  # type: ignore[no-untyped-def]
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


async def test_freezes_collects_young_cycles_first_and_unfreezes_when_stopped() -> None:
    freezer = LongLivedFreezer(freeze_every_s=0.01, full_every_s=3600)
    garbage = weakref.ref(_Node())  # cyclic garbage, young
    task = asyncio.create_task(freezer.run())
    try:
        await _until(lambda: freezer.freezes >= 2)
        assert gc.get_freeze_count() > 0
        assert garbage() is None  # collected before the freeze, not frozen with the rest
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert gc.get_freeze_count() == 0


async def test_the_full_collection_frees_a_cycle_that_died_after_it_was_frozen() -> None:
    freezer = LongLivedFreezer(freeze_every_s=0.01, full_every_s=0.2)
    holder = [_Node()]
    frozen_then_dead = weakref.ref(holder[0])
    task = asyncio.create_task(freezer.run())
    try:
        await _until(lambda: freezer.freezes >= 2)  # the node is frozen while alive
        holder.clear()  # now garbage, but frozen: only the full collection reaches it
        await _until(lambda: frozen_then_dead() is None)
        assert freezer.full_collections >= 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_intervals_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        LongLivedFreezer(freeze_every_s=0)
