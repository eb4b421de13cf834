"""Live telemetry, version 1: what a device reports every few seconds on its telemetry topic.

Owns: the telemetry record's fields and their canonical CBOR encoding. Imports nothing of ours
beyond protocol.wiremap. Not signed: it is live data at MQTT QoS 0 and settles nothing (the signed
interval record does that), so a lost or forged sample costs a dashboard pixel, not a token. It is
still decoded strictly, because the cloud feeds it to totals and alarms.

Power is whole W, signed, with one convention for every flow: **positive means power flowing
into the home's bus** (a source), negative out of it.

* `pv_w` >= 0: inverter output (standby draw at night is reported as 0).
* `battery_w`: positive while **discharging**, negative while charging (the same sign as
  `opModFixedW` in protocol/dispatch.py and IEEE 2030.5's "positive is generating").
* `grid_w`: positive while **importing**, negative while exporting.

So, with all three measured, the home's load is pv_w + battery_w + grid_w. A channel the device
does not measure is None (the key is omitted), never 0: 0 W is a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Any

import cbor2

from protocol import wiremap
from protocol.wiremap import WireFormatError

KIND = "gridmint/telemetry/v1"
MAX_TELEMETRY_BYTES = 512  # a full record is about 90 bytes; anything far larger is not ours
# +-2**31-1 W (2.1 GW) bounds every power: far beyond any site, and it fits a 32-bit register.
MAX_ABS_W = 2**31 - 1
MAX_PERMILLE = 1000
MAX_DEVICE_ID = 64

K_KIND, K_DEVICE, K_BOOT, K_SEQ, K_AT_MS = 0, 1, 2, 3, 4
K_PV_W, K_BATTERY_W, K_SOC, K_GRID_W, K_HEALTH, K_BACKLOG = 5, 6, 7, 8, 9, 10
_KNOWN_KEYS = frozenset(range(11))


class TelemetryFormatError(WireFormatError):
    """Bytes that are not a well-formed, canonical version-1 telemetry record."""


class Health(IntFlag):
    """Conditions the device reports; several may hold at once. No flag set means healthy."""

    OK = 0
    FAULT = 1  # a meter, inverter or the agent itself reports a fault
    CLOCK_UNSYNCHRONISED = 2  # the agent's clock is not synchronised (its tokens would be refused)


_HEALTH_MAX = int(Health.FAULT | Health.CLOCK_UNSYNCHRONISED)


class DeviceState(IntEnum):
    """One state per device for a fleet view: the most serious of what the record shows."""

    OK = 0
    BUFFERING = 1  # records waiting in the outbox: data arrives late but is not lost
    CLOCK_UNSYNCHRONISED = 2
    FAULT = 3


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One live sample. `(boot, seq)` orders samples: seq restarts at 0 when the agent starts,
    boot (the same counter as the interval record's) increases then, so a restart is not read
    as samples arriving out of order."""

    device_id: str
    boot: int
    seq: int
    at_ms: int  # Unix ms UTC of the reading
    pv_w: int | None = None
    battery_w: int | None = None  # + discharging, - charging
    soc_permille: int | None = None
    grid_w: int | None = None  # + import, - export
    health: Health = Health.OK
    backlog: int = 0  # interval records in the outbox not yet confirmed by the cloud

    @property
    def load_w(self) -> int | None:
        """The home's consumption, when every flow into its bus is measured."""
        if self.pv_w is None or self.battery_w is None or self.grid_w is None:
            return None
        return self.pv_w + self.battery_w + self.grid_w

    @property
    def state(self) -> DeviceState:
        """The single state a fleet table shows: fault over clock over backlog."""
        if self.health & Health.FAULT:
            return DeviceState.FAULT
        if self.health & Health.CLOCK_UNSYNCHRONISED:
            return DeviceState.CLOCK_UNSYNCHRONISED
        if self.backlog:
            return DeviceState.BUFFERING
        return DeviceState.OK


def to_map(t: Telemetry) -> dict[int, Any]:
    """The sample as its CBOR map, keys ascending (so plain cbor2 encoding is canonical).

    Values are passed through unconverted, so a bool or float in a field is caught by
    `from_map`, not silently turned into an integer here.
    """
    m: dict[int, Any] = {
        K_KIND: KIND,
        K_DEVICE: t.device_id,
        K_BOOT: t.boot,
        K_SEQ: t.seq,
        K_AT_MS: t.at_ms,
    }
    if t.pv_w is not None:
        m[K_PV_W] = t.pv_w
    if t.battery_w is not None:
        m[K_BATTERY_W] = t.battery_w
    if t.soc_permille is not None:
        m[K_SOC] = t.soc_permille
    if t.grid_w is not None:
        m[K_GRID_W] = t.grid_w
    # An IntFlag member is an int subclass; the wire wants the plain int (type() checks).
    m[K_HEALTH] = int(t.health) if isinstance(t.health, Health) else t.health
    m[K_BACKLOG] = t.backlog
    return m


def from_map(m: dict[int, Any]) -> Telemetry:
    """Build a sample from a decoded map, checking every field's type and range."""
    return Telemetry(
        device_id=wiremap.text(m, K_DEVICE, "device", MAX_DEVICE_ID, min_len=1),
        boot=wiremap.uint(m, K_BOOT, "boot"),
        seq=wiremap.uint(m, K_SEQ, "seq"),
        at_ms=wiremap.uint(m, K_AT_MS, "at_ms"),
        pv_w=wiremap.uint(m, K_PV_W, "pv_w", MAX_ABS_W) if K_PV_W in m else None,
        battery_w=_watts(m, K_BATTERY_W, "battery_w"),
        soc_permille=wiremap.uint(m, K_SOC, "soc", MAX_PERMILLE) if K_SOC in m else None,
        grid_w=_watts(m, K_GRID_W, "grid_w"),
        health=Health(wiremap.uint(m, K_HEALTH, "health", _HEALTH_MAX)),
        backlog=wiremap.uint(m, K_BACKLOG, "backlog"),
    )


def _watts(m: dict[int, Any], key: int, name: str) -> int | None:
    return wiremap.sint(m, key, name, -MAX_ABS_W, MAX_ABS_W) if key in m else None


def encode(t: Telemetry) -> bytes:
    """Canonical CBOR bytes; raises TelemetryFormatError if a field is invalid (so whatever
    encodes also decodes: the same checks run on both sides)."""
    m = to_map(t)
    try:
        from_map(m)
    except WireFormatError as exc:
        raise TelemetryFormatError(str(exc)) from None
    return cbor2.dumps(m)


def decode(payload: bytes) -> Telemetry:
    """Parse telemetry bytes; raises TelemetryFormatError unless they are a canonical v1 record."""
    try:
        m = wiremap.load_map(payload, KIND, _KNOWN_KEYS, MAX_TELEMETRY_BYTES)
        t = from_map(m)
        wiremap.check_canonical(to_map(t), payload)
    except WireFormatError as exc:
        raise TelemetryFormatError(str(exc), non_canonical=exc.non_canonical) from None
    return t
