"""Time bases shared by the edge, the cloud and the simulators.

Owns: the clock abstraction (UTC seconds since the Unix epoch) and a simulated clock that runs
faster than real time, so a five-minute interval can pass in seconds. Imports nothing of ours.

Every process that is given the same (origin_real, origin_sim, speed) computes the same simulated
time, so a simulator and an edge agent in different processes still agree on the interval clock.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    """A source of UTC time in seconds since the Unix epoch."""

    def now(self) -> float:
        """Return the current time in seconds (UTC, Unix epoch)."""
        ...

    async def sleep_until(self, when: float) -> None:
        """Sleep until this clock reads at least `when`."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep for `seconds` of this clock's time."""
        ...


class SystemClock:
    """The machine's real UTC clock."""

    speed = 1.0

    def now(self) -> float:
        """Return the wall-clock time."""
        return time.time()

    async def sleep_until(self, when: float) -> None:
        """Sleep until the wall clock reaches `when`."""
        await asyncio.sleep(max(0.0, when - time.time()))

    async def sleep(self, seconds: float) -> None:
        """Sleep for real seconds."""
        await asyncio.sleep(max(0.0, seconds))


@dataclass(frozen=True, slots=True)
class SimClock:
    """A clock that runs `speed` times faster than real time from a chosen origin.

    sim_time = origin_sim + (real_time - origin_real) * speed
    """

    origin_sim: float
    speed: float
    origin_real: float

    @classmethod
    def starting_at(cls, origin_sim: float, speed: float) -> SimClock:
        """Create a clock that reads `origin_sim` now and runs `speed` times real time."""
        if speed <= 0:
            raise ValueError("speed must be positive")
        return cls(origin_sim=origin_sim, speed=speed, origin_real=time.time())

    def now(self) -> float:
        """Return the simulated time."""
        return self.origin_sim + (time.time() - self.origin_real) * self.speed

    def real_seconds(self, sim_seconds: float) -> float:
        """Convert a span of simulated seconds into real seconds."""
        return sim_seconds / self.speed

    async def sleep_until(self, when: float) -> None:
        """Sleep (in real time) until the simulated clock reaches `when`."""
        while True:
            remaining = when - self.now()
            if remaining <= 0:
                return
            await asyncio.sleep(remaining / self.speed)

    async def sleep(self, seconds: float) -> None:
        """Sleep for `seconds` of simulated time."""
        await self.sleep_until(self.now() + seconds)


class ManualClock:
    """A clock that moves only when told to: for tests that step through faults."""

    speed = 1.0

    def __init__(self, start: float):
        self._now = start

    def now(self) -> float:
        """Return the set time."""
        return self._now

    def set(self, when: float) -> None:
        """Jump to `when` (forwards or backwards, as NTP may)."""
        self._now = when

    def advance(self, seconds: float) -> None:
        """Move forwards."""
        self._now += seconds

    async def sleep_until(self, when: float) -> None:
        """Yield until someone moves the clock to `when`."""
        while self._now < when:
            await asyncio.sleep(0.001)

    async def sleep(self, seconds: float) -> None:
        """Yield until someone moves the clock forward by `seconds`."""
        await self.sleep_until(self._now + seconds)
