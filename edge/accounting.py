"""Interval accounting: cumulative energy counters in, closed intervals of whole Wh out.

Owns: aligning readings to 5- or 15-minute boundaries and turning running totals into interval
energy. Pure logic: no I/O, no clock, no MQTT or SQLite imports (enforced by import-linter).

Rules (see docs/tokens.md and ../shared/reference/devices.md, "Counters"):
- Interval energy is the rise of a lifetime total between the readings taken at the two
  boundaries; every reading in between is also fed in, so a meter swap or a counter reset
  mid-interval loses nothing that was read.
- A total that goes backwards is never taken as a new baseline on its own: the interval is
  flagged "R" and the low value is held as a candidate. Only when the next reading confirms it (it
  rises plausibly from the candidate) does the counter continue from there; a transient zero that
  bounces back is ignored. The energy read before the drop is kept.
- A forward step beyond what the rated capacity allows in the elapsed time is refused (flag "J"),
  so one bad read can never mint an inflated token.
- A different meter (source id) on a channel starts a new segment (flag "SWAP"): energy read from
  the old meter stays booked, the new meter's first reading is its baseline.
- Readings that missed one or more boundaries book the energy since the last boundary on the
  interval that just closed, flagged "GAP" with quality ESTIMATED; nothing is invented.
- A clock that went backwards never closes an interval twice: the reading's energy waits for
  the next interval that was not closed yet (flag "CLOCK").
- A channel derived by integrating power (no energy register) is flagged "PI" and ESTIMATED.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

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
class Reading:
    """One channel's lifetime total (Wh) from one meter, at one time."""

    total_wh: int
    source: str = ""
    integrated: bool = False


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
class ChannelState:
    """Where one channel's counter stands."""

    base: int
    last: int
    source: str = ""
    carried: int = 0
    pending_low: int | None = None
    pending_high: int | None = None
    last_ts: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form."""
        return {
            "base": self.base,
            "last": self.last,
            "source": self.source,
            "carried": self.carried,
            "pending_low": self.pending_low,
            "pending_high": self.pending_high,
            "last_ts": self.last_ts,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChannelState:
        """Inverse of to_json."""
        return cls(
            base=int(d["base"]),
            last=int(d["last"]),
            source=str(d.get("source", "")),
            carried=int(d.get("carried", 0)),
            pending_low=None if d.get("pending_low") is None else int(d["pending_low"]),
            pending_high=None if d.get("pending_high") is None else int(d["pending_high"]),
            last_ts=float(d.get("last_ts", 0.0)),
        )


@dataclass(slots=True)
class AccountantState:
    """What must survive a restart."""

    interval_start: int | None = None
    last_closed_start: int | None = None
    channels: dict[Channel, ChannelState] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    estimated: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-serialisable form."""
        return {
            "interval_start": self.interval_start,
            "last_closed_start": self.last_closed_start,
            "channels": {c.value: s.to_json() for c, s in self.channels.items()},
            "flags": list(self.flags),
            "estimated": self.estimated,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AccountantState:
        """Inverse of to_json."""
        chans = data.get("channels") or {}
        if not isinstance(chans, dict):
            raise ValueError("channels must be a mapping")
        start = data.get("interval_start")
        closed = data.get("last_closed_start")
        return cls(
            interval_start=int(start) if isinstance(start, int) else None,
            last_closed_start=int(closed) if isinstance(closed, int) else None,
            channels={Channel(k): ChannelState.from_json(v) for k, v in chans.items()},
            flags=[str(f) for f in data.get("flags") or []],
            estimated=bool(data.get("estimated", False)),
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

    def _flag(self, flag: str) -> None:
        if flag not in self.state.flags:
            self.state.flags.append(flag)

    def _update_channel(self, ch: Channel, r: Reading, ts: float) -> None:
        st = self.state
        cs = st.channels.get(ch)
        if cs is None:
            st.channels[ch] = ChannelState(
                base=r.total_wh, last=r.total_wh, source=r.source, last_ts=ts
            )
            return
        if r.integrated:
            self._flag("PI")
            st.estimated = True
        if r.source != cs.source:
            # Another meter on this channel: keep what the old one measured, restart from the new.
            self._flag("SWAP")
            cs.carried += cs.last - cs.base
            cs.base = cs.last = r.total_wh
            cs.source, cs.pending_low, cs.last_ts = r.source, None, ts
            return
        # Backwards clocks give no elapsed time; bound the step by one interval then.
        elapsed = ts - cs.last_ts if ts > cs.last_ts else float(self.interval_s)
        now = r.total_wh
        if now < cs.last:
            # Hold the low value as a candidate; _confirm_resets accepts it once it rises.
            self._flag("R")
            if cs.pending_low is None or now < cs.pending_low:
                cs.pending_low = now
            cs.last_ts = ts
            return
        cs.pending_low = None  # back at or above the last good total: the drop was transient
        if now - cs.last > self.max_step_wh(elapsed):
            # Refused; held as a candidate in case the counter really continues from there.
            self._flag("J")
            cs.pending_high = now
            cs.last_ts = ts
            return
        cs.pending_high = None
        cs.last, cs.last_ts = now, ts

    def _confirm_resets(self, readings: dict[Channel, Reading], ts: float) -> None:
        """A refused value that the next reading continues from plausibly is the new counter.

        A low candidate (reset) or a high one (jump) becomes the base from which energy counts;
        the drop or the jump itself is never counted.
        """
        step = self.max_step_wh(self.interval_s)
        for ch, r in readings.items():
            cs = self.state.channels.get(ch)
            if cs is None or r.source != cs.source:
                continue
            for candidate in (cs.pending_low, cs.pending_high):
                if candidate is None or not candidate < r.total_wh <= candidate + step:
                    continue
                if candidate == cs.pending_high and r.total_wh <= cs.last + step:
                    continue  # back near the old total: handled as an ordinary reading
                cs.carried += cs.last - cs.base
                cs.base, cs.last = candidate, r.total_wh
                cs.pending_low = cs.pending_high = None
                cs.last_ts = ts
                break

    def observe(self, ts: float, readings: dict[Channel, Reading]) -> ClosedInterval | None:
        """Take readings at time `ts`; return the interval they close, if any."""
        st = self.state
        boundary = align_down(ts, self.interval_s)
        first = st.interval_start is None
        self._confirm_resets(readings, ts)
        for ch, r in readings.items():
            self._update_channel(ch, r, ts)
        if first:
            st.interval_start = boundary
            st.flags.clear()
            st.estimated = False
            return None
        assert st.interval_start is not None
        if boundary <= st.interval_start:
            if boundary < st.interval_start:
                self._flag("CLOCK")
            return None
        closed_start = boundary - self.interval_s
        if st.last_closed_start is not None and closed_start <= st.last_closed_start:
            # The clock went back past intervals already minted: wait for a new one.
            self._flag("CLOCK")
            return None
        missed = (boundary - st.interval_start) // self.interval_s - 1
        if missed > 0:
            self._flag("GAP")
            st.estimated = True
        for ch in st.channels:
            if ch not in readings:
                self._flag("MISSING")
        energy: dict[Channel, int] = {}
        totals: dict[Channel, int] = {}
        for ch, cs in st.channels.items():
            energy[ch] = cs.carried + cs.last - cs.base
            totals[ch] = cs.last
            cs.base, cs.carried = cs.last, 0
        closed = ClosedInterval(
            interval_start=closed_start,
            interval_s=self.interval_s,
            energy_wh=energy,
            totals_wh=totals,
            reading_ts=ts,
            flags=tuple(st.flags),
            estimated=st.estimated,
        )
        st.interval_start = boundary
        st.last_closed_start = closed_start
        st.flags = []
        st.estimated = False
        return closed


@dataclass(slots=True)
class PowerIntegrator:
    """Turns power readings into a running energy total, for devices without an energy register.

    Trapezoidal rule between readings; a gap longer than `max_gap_s` is not bridged (the energy
    in it is unknown, and the interval is flagged by the accountant's GAP/ESTIMATED rules).
    """

    max_gap_s: float = 120.0
    total_wh_x1000: int = 0  # milli-Wh, so rounding never drifts
    last_ts: float | None = None
    last_w: float = 0.0

    def add(self, ts: float, power_w: float) -> int:
        """Add a reading; return the running total in whole Wh."""
        power_w = max(power_w, 0.0)
        if self.last_ts is not None and 0 < ts - self.last_ts <= self.max_gap_s:
            dt = ts - self.last_ts
            self.total_wh_x1000 += round((self.last_w + power_w) / 2 * dt / 3.6)
        self.last_ts, self.last_w = ts, power_w
        return self.total_wh_x1000 // 1000
