"""The live fleet: every device's latest state and power, and running totals per group.

Owns: applying telemetry samples and status messages to per-device state, keeping the totals of
"all", of each zone and of each feeder up to date incrementally (a sample moves the totals by
its difference from the device's previous sample, so reading a total costs nothing whatever the
fleet size),
and a change log that live views read from a cursor (only what changed since their last read).
Pure: no I/O, no clock (callers pass times in ms).

Flows and signs are protocol/telemetry.py's: + into the home's bus. So import is grid_w > 0,
export grid_w < 0, discharge battery_w > 0.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cloud.domain.fleet_groups import Group, GroupError, parse_group
from protocol.telemetry import Health, Telemetry

# A device that sent nothing for this long is shown offline even without a last-will message
# (a Pi whose broker session is up but whose agent hangs).
STALE_MS = 60_000
_FAULT = int(Health.FAULT)
_CLOCK_UNSYNCHRONISED = int(Health.CLOCK_UNSYNCHRONISED)


@dataclass(slots=True)
class Totals:
    """Sums over a group's devices (W and Wh are integers; soc is a capacity-weighted mean)."""

    devices: int = 0
    online: int = 0
    pv_w: int = 0
    battery_w: int = 0
    grid_w: int = 0
    import_w: int = 0
    export_w: int = 0
    load_w: int = 0
    stored_wh: int = 0
    capacity_wh: int = 0
    up_flex_w: int = 0  # more power into the bus: battery discharge headroom
    down_flex_w: int = 0  # less: battery charge headroom plus PV that can be curtailed

    def add(self, c: Contribution, sign: int) -> None:
        """Add (sign 1) or remove (sign -1) one device's contribution."""
        self.devices += sign
        self.online += sign * c.online
        self.pv_w += sign * c.pv_w
        self.battery_w += sign * c.battery_w
        self.grid_w += sign * c.grid_w
        self.import_w += sign * max(c.grid_w, 0)
        self.export_w += sign * max(-c.grid_w, 0)
        self.load_w += sign * c.load_w
        self.stored_wh += sign * c.stored_wh
        self.capacity_wh += sign * c.capacity_wh
        self.up_flex_w += sign * c.up_flex_w
        self.down_flex_w += sign * c.down_flex_w

    def shift(self, old: Contribution, new: Contribution) -> None:
        """Replace one device's contribution `old` by `new` (as add(old, -1) then add(new, 1),
        in one pass: this runs for every telemetry sample)."""
        self.online += new.online - old.online
        self.pv_w += new.pv_w - old.pv_w
        self.battery_w += new.battery_w - old.battery_w
        self.grid_w += new.grid_w - old.grid_w
        self.import_w += max(new.grid_w, 0) - max(old.grid_w, 0)
        self.export_w += max(-new.grid_w, 0) - max(-old.grid_w, 0)
        self.load_w += new.load_w - old.load_w
        self.stored_wh += new.stored_wh - old.stored_wh
        self.capacity_wh += new.capacity_wh - old.capacity_wh
        self.up_flex_w += new.up_flex_w - old.up_flex_w
        self.down_flex_w += new.down_flex_w - old.down_flex_w

    @property
    def soc_permille(self) -> int | None:
        return self.stored_wh * 1000 // self.capacity_wh if self.capacity_wh else None

    def as_dict(self) -> dict[str, int | None]:
        return {
            "devices": self.devices,
            "online": self.online,
            "pv_w": self.pv_w,
            "battery_w": self.battery_w,
            "grid_w": self.grid_w,
            "import_w": self.import_w,
            "export_w": self.export_w,
            "load_w": self.load_w,
            "stored_wh": self.stored_wh,
            "soc_permille": self.soc_permille,
            "up_flex_w": self.up_flex_w,
            "down_flex_w": self.down_flex_w,
        }


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one device adds to its groups' totals (0 for what it does not measure)."""

    online: int = 0
    pv_w: int = 0
    battery_w: int = 0
    grid_w: int = 0
    load_w: int = 0
    stored_wh: int = 0
    capacity_wh: int = 0
    up_flex_w: int = 0
    down_flex_w: int = 0


NOTHING = Contribution()


@dataclass(slots=True)
class DeviceLive:
    """One device as the fleet page shows it."""

    device_id: str
    site_id: str
    zone: str
    rating_w: int
    battery_wh: int  # usable battery capacity; 0: none known
    battery_max_w: int
    latitude: float | None = None
    longitude: float | None = None
    connected: bool = False  # per the retained status topic (last will: offline)
    status: str = "unknown"  # the agent's own word: online, buffering, fault, offline
    since_ms: int = 0  # when `state` last changed
    last_ms: int = 0  # last telemetry received
    telemetry: Telemetry | None = None
    backlog: int = 0
    version: int = 0
    contribution: Contribution = field(default=NOTHING)
    feeder: str = ""  # the distribution feeder the site hangs off (a tag, like the zone)

    def reading(self, key: str) -> int | None:
        """A field of the latest sample (pv_w, battery_w, grid_w, soc_permille), None if
        there is no sample or the device does not report it."""
        t = self.telemetry
        return None if t is None else getattr(t, key, None)

    @property
    def state(self) -> str:
        """online | offline | buffering | fault | clock_unsynchronised."""
        if not self.connected:
            return "offline"
        t = self.telemetry
        # plain int bits: IntFlag's & builds a flag object, and this runs several times for
        # every telemetry sample
        health = int(t.health) if t is not None else 0
        if self.status == "fault" or health & _FAULT:
            return "fault"
        if health & _CLOCK_UNSYNCHRONISED:
            return "clock_unsynchronised"
        if self.backlog > 0 or self.status == "buffering":
            return "buffering"
        return "online"

    def as_dict(self) -> dict[str, object]:
        t = self.telemetry
        return {
            "device_id": self.device_id,
            "site_id": self.site_id,
            "zone": self.zone,
            "feeder": self.feeder,
            "state": self.state,
            "since_ms": self.since_ms,
            "last_ms": self.last_ms,
            "rating_w": self.rating_w,
            "pv_w": t.pv_w if t else None,
            "battery_w": t.battery_w if t else None,
            "soc_permille": t.soc_permille if t else None,
            "grid_w": t.grid_w if t else None,
            "backlog": self.backlog,
            "latitude": self.latitude,
            "longitude": self.longitude,
        }


def contribution(d: DeviceLive) -> Contribution:
    """A device's share of its groups' totals, from its latest sample."""
    t = d.telemetry
    online = int(d.connected)
    if t is None or not d.connected:
        return Contribution(online=online, capacity_wh=d.battery_wh)
    pv = t.pv_w or 0
    bat = t.battery_w or 0
    grid = t.grid_w or 0
    soc = t.soc_permille
    stored = d.battery_wh * soc // 1000 if soc is not None else 0
    up = max(d.battery_max_w - bat, 0) if d.battery_max_w and soc is not None and soc > 100 else 0
    down = (
        max(d.battery_max_w + bat, 0) if d.battery_max_w and soc is not None and soc < 950 else 0
    ) + pv
    return Contribution(
        online=online,
        pv_w=pv,
        battery_w=bat,
        grid_w=grid,
        load_w=t.load_w or 0,
        stored_wh=stored,
        capacity_wh=d.battery_wh if soc is not None else 0,
        up_flex_w=up,
        down_flex_w=down,
    )


class FleetState:
    """Devices by id, totals for "all", each zone and each feeder, and a change log for live
    views."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceLive] = {}
        self.totals: dict[str, Totals] = {"all": Totals()}
        self.version = 0
        self._changed: OrderedDict[str, int] = OrderedDict()  # device id -> version, oldest first

    def _groups(self, d: DeviceLive) -> tuple[str, ...]:
        """The running groups a device counts in: all, its zone and its feeder."""
        tags: tuple[str, ...] = ("all",)
        if d.zone:
            tags += (f"zone:{d.zone}",)
        if d.feeder:
            tags += (f"feeder:{d.feeder}",)
        return tags

    def _restate(self, d: DeviceLive, now_ms: int, before: str) -> None:
        new = contribution(d)
        old = d.contribution
        if new != old:
            for g in self._groups(d):
                tot = self.totals.get(g)
                if tot is None:
                    tot = self.totals[g] = Totals()
                tot.shift(old, new)
            d.contribution = new
        if d.state != before:
            d.since_ms = now_ms
        self.version += 1
        d.version = self.version
        self._changed[d.device_id] = self.version
        self._changed.move_to_end(d.device_id)

    def register(
        self,
        device_id: str,
        site_id: str,
        zone: str,
        rating_w: int,
        battery_wh: int = 0,
        battery_max_w: int = 0,
        latitude: float | None = None,
        longitude: float | None = None,
        now_ms: int = 0,
        feeder: str = "",
    ) -> DeviceLive:
        """Add a device (or update its registry facts, keeping its live state)."""
        d = self.devices.get(device_id)
        if d is not None:
            self._move(d, zone, feeder)
            d.site_id, d.rating_w = site_id, rating_w
            d.battery_wh, d.battery_max_w = battery_wh, battery_max_w
            d.latitude, d.longitude = latitude, longitude
            self._restate(d, now_ms, d.state)
            return d
        d = DeviceLive(
            device_id,
            site_id,
            zone,
            rating_w,
            battery_wh,
            battery_max_w,
            latitude,
            longitude,
            feeder=feeder,
        )
        d.since_ms = now_ms
        self.devices[device_id] = d
        for g in self._groups(d):
            self.totals.setdefault(g, Totals()).add(NOTHING, 1)
        self._restate(d, now_ms, d.state)
        return d

    def _move(self, d: DeviceLive, zone: str, feeder: str) -> None:
        if (zone, feeder) == (d.zone, d.feeder):
            return
        for g in self._groups(d):
            self.totals[g].add(d.contribution, -1)
        d.contribution = NOTHING
        d.zone, d.feeder = zone, feeder
        for g in self._groups(d):
            self.totals.setdefault(g, Totals()).add(NOTHING, 1)

    def on_telemetry(self, t: Telemetry, now_ms: int) -> DeviceLive | None:
        """Apply a sample; None for an unregistered device (the caller counts it).

        A sample older than the one held (by (boot, seq)) is ignored: QoS 0 may reorder.
        """
        d = self.devices.get(t.device_id)
        if d is None:
            return None
        held = d.telemetry
        if held is not None and (t.boot, t.seq) <= (held.boot, held.seq):
            return d
        before = d.state
        d.telemetry = t
        d.last_ms = now_ms
        d.backlog = t.backlog
        d.connected = True
        self._restate(d, now_ms, before)
        return d

    def on_status(
        self, device_id: str, status: str, waiting: int, now_ms: int
    ) -> DeviceLive | None:
        """Apply the retained status ("online", "buffering", "fault", "offline" by last will)."""
        d = self.devices.get(device_id)
        if d is None:
            return None
        before = d.state
        d.status = status
        d.connected = status != "offline"
        d.backlog = waiting
        self._restate(d, now_ms, before)
        return d

    def expire(self, now_ms: int, stale_ms: int = STALE_MS) -> list[DeviceLive]:
        """Mark devices silent for `stale_ms` offline; returns them."""
        gone = []
        for d in self.devices.values():
            if d.connected and d.last_ms and now_ms - d.last_ms > stale_ms:
                before = d.state
                d.connected = False
                d.status = "offline"
                self._restate(d, now_ms, before)
                gone.append(d)
        return gone

    def changed_since(self, version: int) -> Iterator[DeviceLive]:
        """Devices changed after `version`, oldest change first (costs what changed)."""
        newer = []
        for device_id, v in reversed(self._changed.items()):
            if v <= version:
                break
            newer.append(self.devices[device_id])
        return reversed(newer)

    def members(self, group: str | Group) -> Iterable[DeviceLive]:
        """Devices of a group (cloud/domain/fleet_groups.py); none for a name that means
        nothing (callers that take names from people parse them first, for the message)."""
        if isinstance(group, str):
            try:
                group = parse_group(group)
            except GroupError:
                return []
        if group.kind == "all":
            return list(self.devices.values())
        if group.kind == "device":
            d = self.devices.get(group.value)
            return [d] if d is not None else []
        return [d for d in self.devices.values() if group.has(d)]

    def group_totals(self, group: str) -> Totals:
        """Totals of a group: kept running for "all", zones and feeders, summed for others."""
        held = self.totals.get(group)
        if held is not None:
            return held
        tot = Totals()
        for d in self.members(group):
            tot.add(d.contribution, 1)
        return tot
