"""A simulated Victron SmartSolar MPPT speaking the VE.Direct text protocol over a serial port.

Owns: `SimulatedMppt` (one charge controller: block contents computed from a `HomeModel` PV
output on a clock, the H19/H20/H22 yield counters integrated from it, injectable faults) and
`hex_frame` (a well-formed VE.Direct HEX frame for interleaving).

Like a real controller it sends one block per real second (`interval_s`), whatever the clock's
speed: with a fast SimClock each block carries the values at `clock.now()`, and the yield
counters are integrated over the simulated time in between. The block is written to the
simulator end of a `PtyPair` (pyserial, 19200 8N1), so the driver reads it through a real
serial stack. If the port disappears (adapter "unplugged") the simulator keeps its counters and
reopens the same path on every tick until it comes back.

Battery-side values (V, I, IL, VPV) come from a deliberately simple charger model: they only
need to be plausible and consistent with PPV, not electrochemically right.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import serial

from protocol.clock import Clock
from simulators.models import EnergyIntegrator, HomeModel

#: Charger efficiency from panel to battery terminals.
EFFICIENCY: Final = 0.97
#: HEX frame payloads are checked so that command + payload + checksum byte sum to 0x55.
_HEX_SUM: Final = 0x55


def hex_frame(command: int = 0xA, payload: bytes = b"\xd5\xed\x00\x30\x05") -> bytes:
    """A VE.Direct HEX frame ':' + command nibble + payload hex + checksum + LF.

    The default is an asynchronous (0xA) message for register 0xEDD5 (charger voltage) with
    flags 0 and the value 0x0530 = 13.28 V, as a controller sends unsolicited.
    """
    if not 0 <= command <= 0xF:
        raise ValueError("command is one hex digit")
    check = (_HEX_SUM - command - sum(payload)) & 0xFF
    return b":" + f"{command:X}{payload.hex().upper()}{check:02X}".encode("ascii") + b"\n"


def encode_fields(fields: list[tuple[str, str]]) -> bytes:
    """Wire bytes of a block with its Checksum field (computed here, not by the driver)."""
    body = bytearray()
    for label, value in fields:
        body += b"\r\n" + label.encode("ascii") + b"\t" + value.encode("ascii")
    body += b"\r\nChecksum\t"
    body.append((256 - sum(body) % 256) % 256)
    return bytes(body)


@dataclass(frozen=True, slots=True)
class SentBlock:
    """A block the simulator put on the wire (or would have, during a pause)."""

    ts: float  # clock time the values belong to
    fields: dict[str, str]
    good: bool  # False if deliberately corrupted
    sent: bool  # False if suppressed by pause() or an absent port


class SimulatedMppt:
    """One simulated MPPT charge controller on a clock, sending VE.Direct blocks.

    `capacity_w` is the panel array's rating; `battery_nominal_v` 12/24/48 sets the voltage
    levels; `load_share` scales the home's load profile onto the controller's load output.
    """

    def __init__(
        self,
        clock: Clock,
        capacity_w: int = 1000,
        seed: int = 0,
        *,
        port_path: str | Path | None = None,
        latitude: float = 48.14,
        longitude: float = 11.58,
        base_load_w: float = 400.0,
        home: HomeModel | None = None,
        battery_nominal_v: int = 12,
        load_output: bool = True,
        load_share: float = 0.05,
        start_yield_kwh: float = 123.45,
        interval_s: float = 1.0,
        product_id: int = 0xA053,
        firmware: str = "159",
        serial_number: str = "HQ2231SIM01",
        history: int = 600,
    ) -> None:
        if battery_nominal_v not in (12, 24, 36, 48):
            raise ValueError("battery_nominal_v must be 12, 24, 36 or 48")
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.clock = clock
        self.home = home or HomeModel(capacity_w, latitude, longitude, base_load_w, seed)
        self.capacity_w = self.home.capacity_w
        self.port_path = None if port_path is None else str(port_path)
        self.battery_nominal_v = battery_nominal_v
        self.load_output = load_output
        self.load_share = load_share
        self.interval_s = interval_s
        self.product_id = product_id
        self.firmware = firmware
        self.serial_number = serial_number
        self.rng = random.Random(f"vedirect:{seed}")
        # Counters: yield in float Wh; the wire carries 0.01 kWh steps, rounded down.
        self.yield_total_wh = start_yield_kwh * 1000.0
        self.yield_today_wh = 0.0
        self.yield_yesterday_wh = 0.0
        self.max_power_today_w = 0
        self.max_power_yesterday_w = 0
        self.day_sequence = 0
        self._last_ts: float | None = None
        self._day: int | None = None
        self.history: deque[SentBlock] = deque(maxlen=history)
        # Faults.
        self._corrupt = 0
        self._garbage = bytearray()
        self._hex: list[bytes] = []
        self._paused_until = 0.0
        self._port: Any = None
        self._task: asyncio.Task[None] | None = None
        self.blocks_sent = 0
        self.write_errors = 0

    # --- model ---------------------------------------------------------------------------------

    def _solar_day(self, ts: float) -> int:
        return math.floor((ts + self.home.longitude_deg / 15.0 * 3600.0) / 86400.0)

    def advance(self, ts: float) -> None:
        """Integrate the yield counters up to `ts` and roll the day history over at midnight
        (local solar time; a real controller detects night instead)."""
        if self._last_ts is None:
            self._last_ts, self._day = ts, self._solar_day(ts)
            return
        if ts <= self._last_ts:
            return
        integrator = EnergyIntegrator()
        integrator.integrate(self.home.pv_w, self._last_ts, ts)
        energy_wh = integrator.import_wh * EFFICIENCY
        day = self._solar_day(ts)
        if day != self._day:
            self.yield_yesterday_wh, self.yield_today_wh = self.yield_today_wh, 0.0
            self.max_power_yesterday_w, self.max_power_today_w = self.max_power_today_w, 0
            self.day_sequence = (self.day_sequence + max(1, day - (self._day or day))) % 365
            self._day = day
        self.yield_total_wh += energy_wh
        self.yield_today_wh += energy_wh
        self._last_ts = ts

    def model_values(self, ts: float) -> dict[str, float]:
        """The instantaneous values a block made at `ts` carries, in the driver's plain units
        (battery_voltage_v, battery_current_a, pv_voltage_v, pv_power_w, load_current_a)."""
        pv_w = self.home.pv_w(ts)
        fraction = min(1.0, pv_w / self.capacity_w) if self.capacity_w > 0 else 0.0
        nominal = self.battery_nominal_v
        battery_v = nominal * (1.05 + 0.1 * fraction)
        pv_v = nominal * 2.6 * (0.92 + 0.08 * fraction) if pv_w > 0.0 else 0.0
        load_a = self.home.load_w(ts) * self.load_share / battery_v if self.load_output else 0.0
        battery_a = pv_w * EFFICIENCY / battery_v - load_a
        return {
            "battery_voltage_v": battery_v,
            "battery_current_a": battery_a,
            "pv_voltage_v": pv_v,
            "pv_power_w": pv_w,
            "load_current_a": load_a,
        }

    def fields_at(self, ts: float) -> list[tuple[str, str]]:
        """Advance the counters to `ts` and return the block's fields in wire order."""
        self.advance(ts)
        m = self.model_values(ts)
        ppv = round(m["pv_power_w"])
        self.max_power_today_w = max(self.max_power_today_w, ppv)
        on = ppv > 0
        fields = [
            ("PID", f"0x{self.product_id:04X}"),
            ("FW", self.firmware),
            ("SER#", self.serial_number),
            ("V", str(round(m["battery_voltage_v"] * 1000))),
            ("I", str(round(m["battery_current_a"] * 1000))),
            ("VPV", str(round(m["pv_voltage_v"] * 1000))),
            ("PPV", str(ppv)),
            ("CS", "3" if on else "0"),  # bulk / off
            ("MPPT", "2" if on else "0"),  # tracking / off
            ("OR", "0x00000000" if on else "0x00000001"),  # 1 = no input power
            ("ERR", "0"),
        ]
        if self.load_output:
            fields += [("LOAD", "ON"), ("IL", str(round(m["load_current_a"] * 1000)))]
        fields += [
            ("H19", str(math.floor(self.yield_total_wh / 10.0))),
            ("H20", str(math.floor(self.yield_today_wh / 10.0))),
            ("H21", str(self.max_power_today_w)),
            ("H22", str(math.floor(self.yield_yesterday_wh / 10.0))),
            ("H23", str(self.max_power_yesterday_w)),
            ("HSDS", str(self.day_sequence)),
        ]
        return fields

    # --- faults --------------------------------------------------------------------------------

    def corrupt_next(self, n: int = 1) -> None:
        """Flip one bit in each of the next `n` blocks, so their checksum fails."""
        self._corrupt += n

    def garbage(self, nbytes: int) -> None:
        """Send `nbytes` random bytes before the next block (line noise, a half block...)."""
        self._garbage += self.rng.randbytes(nbytes)

    def interleave_hex(self, frame: bytes | None = None) -> None:
        """Put a HEX frame into the middle of the next block (inside the SER# value)."""
        self._hex.append(frame if frame is not None else hex_frame())

    def reset_yield(self) -> None:
        """The user clears the history: H19 (yield total) starts again from 0."""
        self.yield_total_wh = 0.0

    def pause(self, seconds: float) -> None:
        """Send nothing for `seconds` real seconds (counters keep running)."""
        loop = asyncio.get_running_loop()
        self._paused_until = loop.time() + seconds

    @property
    def paused(self) -> bool:
        """Whether a pause() is in force."""
        with contextlib.suppress(RuntimeError):
            return asyncio.get_running_loop().time() < self._paused_until
        return False

    def next_block_bytes(self, ts: float, *, record: bool = True, sent: bool = True) -> bytes:
        """The bytes for the block at `ts`, with any pending faults applied."""
        fields = self.fields_at(ts)
        data = bytearray(encode_fields(fields))
        good = True
        if not sent:
            if record:
                self.history.append(SentBlock(ts, dict(fields), good, False))
            return b""
        if self._corrupt > 0:
            self._corrupt -= 1
            good = False
            # Flip the lowest bit of the V value's last digit: still grammatical, sum off by 1.
            at = data.index(b"\r\nI\t") - 1
            data[at] ^= 0x01
        if self._hex:
            at = data.index(b"SER#\t") + 5 + len(self.serial_number) // 2
            data[at:at] = b"".join(self._hex)
            self._hex.clear()
        if self._garbage:
            data[0:0] = self._garbage
            self._garbage.clear()
        if record:
            self.history.append(SentBlock(ts, dict(fields), good, True))
        return bytes(data)

    # --- port and loop -------------------------------------------------------------------------

    async def start(self, port_path: str | Path | None = None) -> None:
        """Open the port (if it exists yet) and start sending once per `interval_s`."""
        if port_path is not None:
            self.port_path = str(port_path)
        if self.port_path is None:
            raise ValueError("no port_path to write to")
        if self._task is not None:
            return
        await self._ensure_port()
        self._task = asyncio.create_task(self._run(), name=f"vedirect-sim:{self.port_path}")

    async def stop(self) -> None:
        """Stop sending and close the port."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_port()

    async def __aenter__(self) -> SimulatedMppt:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _open_port(self) -> Any:
        return serial.Serial(
            self.port_path,
            baudrate=19200,
            bytesize=serial.EIGHTBITS,
            parity=serial.PARITY_NONE,
            stopbits=serial.STOPBITS_ONE,
            timeout=0,
            write_timeout=1.0,
        )

    async def _ensure_port(self) -> bool:
        if self._port is not None:
            return True
        try:
            self._port = await asyncio.to_thread(self._open_port)
        except (serial.SerialException, OSError):
            self._port = None
            return False
        return True

    async def _close_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(port.close)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            send = loop.time() >= self._paused_until
            data = self.next_block_bytes(self.clock.now(), sent=send)
            if send and await self._ensure_port():
                try:
                    await asyncio.to_thread(self._port.write, data)
                    self.blocks_sent += 1
                except (serial.SerialException, OSError):
                    # Port gone (unplugged) or stuck: drop it, reopen on a later tick.
                    self.write_errors += 1
                    await self._close_port()
            next_at += self.interval_s
            delay = next_at - loop.time()
            if delay < 0:  # fell behind (slow machine): do not burst to catch up
                next_at = loop.time()
                delay = 0.0
            await asyncio.sleep(delay)
