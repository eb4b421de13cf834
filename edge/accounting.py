"""Interval accounting: cumulative energy counters in, closed intervals of whole Wh out.

Owns: aligning readings to 5- or 15-minute boundaries and turning running totals into interval
energy. Pure logic: no I/O, no clock, no MQTT or SQLite imports (enforced by import-linter).

Rules (see docs/tokens.md and ../shared/reference/devices.md, "Counters"):
- Interval energy is the difference of a lifetime total between the readings taken at the two
  boundaries, never integrated power and never a daily counter.
- A total that goes backwards is never taken as a new baseline: the last good total is kept and
  the interval is flagged (status "R" for a reset/regression).
- A forward jump beyond what the rated capacity allows in the elapsed time is refused the same way
  (status "J"), so one bad read can never mint an inflated token.
- When readings missed one or more boundaries, the energy since the last good boundary reading is
  booked on the interval that just closed, flagged "GAP" with quality ESTIMATED; nothing is
  invented for the intervals without readings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

# Slack over rated power for the plausibility bound on a counter's forward step.
JUMP_MARGIN = 1.5


class Channel(StrEnum):
    """Energy channels of a site, in the record's wire order."""

    GENERATED = "generated"
    IMPORTED = "imported"
    EXPORTED = "exported"
    CHARGED = "charged"
    DISCHARGED = "discharged"


CHANNEL_ORDER: tuple[Channel, ...] = tuple(Channel)


def align_down(ts: float, interval_s: int) -> int:
    """The start of the interval that contains `ts`."""
    return int(ts // interval_s) * interval_s


@dataclass(frozen=True, slots=True)
class ClosedInterval:
    """One closed interval's energy, ready to be minted."""

    interval_start: int
    interval_s: int
    energy_wh: dict[Channel, int]
    totals_wh: dict[Channel, int]
    reading_ts: float
    flags: tuple[str, ...]
    estimated: bool

    @property
    def status(self) -> str:
        """Meter status text for the record: "G" (good) followed by any flags."""
        return ",".join(("G", *self.flags)) if self.flags else "G"


@dataclass(slots=True)
class AccountantState:
    """What must survive a restart: the boundary and the totals read at it."""

    interval_start: int | None = None
    totals_wh: dict[Channel, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """Plain JSON-serialisable form."""
        return {
            "interval_start": self.interval_start,
            "totals_wh": {c.value: v for c, v in self.totals_wh.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> AccountantState:
        """Inverse of to_json."""
        start = data.get("interval_start")
        totals = data.get("totals_wh") or {}
        if not isinstance(totals, dict):
            raise ValueError("totals_wh must be a mapping")
        return cls(
            interval_start=int(start) if isinstance(start, int) else None,
            totals_wh={Channel(k): int(v) for k, v in totals.items()},
        )


class IntervalAccountant:
    """Closes intervals from readings of cumulative totals (Wh).

    Feed it every reading with `observe`; it returns a ClosedInterval when a boundary was crossed.
    The very first reading only sets the baseline: an interval that started before the agent
    could read it is not minted, since part of its energy is unknown.
    """

    def __init__(self, interval_s: int, capacity_w: int, state: AccountantState | None = None):
        if interval_s not in (300, 900):
            raise ValueError("interval must be 300 or 900 seconds")
        self.interval_s = interval_s
        self.capacity_w = capacity_w
        self.state = state or AccountantState()

    def max_step_wh(self, elapsed_s: float) -> int:
        """Largest believable forward step of a counter over `elapsed_s` seconds."""
        return int(self.capacity_w * max(elapsed_s, 1.0) / 3600 * JUMP_MARGIN) + 1

    def observe(self, ts: float, totals_wh: dict[Channel, int]) -> ClosedInterval | None:
        """Take a reading at time `ts`; return the interval it closes, if any."""
        boundary = align_down(ts, self.interval_s)
        st = self.state
        if st.interval_start is None:
            st.interval_start = boundary
            st.totals_wh = dict(totals_wh)
            return None
        if boundary <= st.interval_start:
            return None  # still inside the current interval
        missed = (boundary - st.interval_start) // self.interval_s - 1
        closed_start = boundary - self.interval_s
        elapsed = ts - st.interval_start
        flags: list[str] = []
        energy: dict[Channel, int] = {}
        new_totals: dict[Channel, int] = {}
        for ch, now in totals_wh.items():
            before = st.totals_wh.get(ch)
            if before is None:
                # A channel that appeared mid-way: baseline only.
                energy[ch] = 0
                new_totals[ch] = now
                continue
            step = now - before
            if step < 0:
                flags.append("R")
                energy[ch] = 0
                new_totals[ch] = before
            elif step > self.max_step_wh(elapsed):
                flags.append("J")
                energy[ch] = 0
                new_totals[ch] = before
            else:
                energy[ch] = step
                new_totals[ch] = now
        for ch, before in st.totals_wh.items():
            if ch not in totals_wh:
                flags.append("MISSING")
                energy[ch] = 0
                new_totals[ch] = before
        if missed > 0:
            flags.append("GAP")
        st.interval_start = boundary
        st.totals_wh = new_totals
        return ClosedInterval(
            interval_start=closed_start,
            interval_s=self.interval_s,
            energy_wh=energy,
            totals_wh=dict(new_totals),
            reading_ts=ts,
            flags=tuple(dict.fromkeys(flags)),
            estimated=missed > 0,
        )
