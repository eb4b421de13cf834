"""When Python's cyclic garbage collector may pause the aggregator.

Owns: one process-wide rule. The market and the ledger keep hundreds of thousands of long-lived
objects (orders, entries, state); every full (generation 2) collection walks all of them, which
measured 50-150 ms per pause under 500 orders/s, the whole tail of the order latency. So once a
second the young generations are collected and everything that survived is frozen (moved out of
the collector's sight); full collections then walk only what the last second created. Frozen
objects are still freed by reference counting, which is how the market's and the ledger's
objects go (they make no reference cycles); only a cycle that became garbage after it was frozen
waits, until the hourly full collection, which unfreezes and collects everything once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)


class LongLivedFreezer:
    """Run `await freezer.run()` as a task of the process that serves requests."""

    def __init__(self, freeze_every_s: float = 1.0, full_every_s: float = 3600.0) -> None:
        if freeze_every_s <= 0 or full_every_s <= 0:
            raise ValueError("gc policy: intervals must be positive")
        self.freeze_every_s = freeze_every_s
        self.full_every_s = full_every_s
        self.freezes = 0
        self.full_collections = 0

    async def run(self) -> None:
        """Freeze every `freeze_every_s`; collect everything every `full_every_s`."""
        last_full = time.monotonic()
        try:
            while True:
                await asyncio.sleep(self.freeze_every_s)
                if time.monotonic() - last_full >= self.full_every_s:
                    gc.unfreeze()
                    started = time.perf_counter()
                    gc.collect()
                    self.full_collections += 1
                    last_full = time.monotonic()
                    log.info(
                        "full garbage collection: %.0f ms", 1000 * (time.perf_counter() - started)
                    )
                gc.collect(1)  # the young generations, so fresh cyclic garbage is not frozen
                gc.freeze()
                self.freezes += 1
        finally:
            gc.unfreeze()  # a stopped runtime leaves the collector as it found it
