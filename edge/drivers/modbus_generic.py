"""Generic Modbus reader: reads the quantities of a register map from one unit on a bus.

Owns: `ModbusDevice` (planned block reads, decoding, per-device backoff). Re-exports
`DeviceUnavailableError` (one plain-language reason why a read gave no data), which lives in
`edge.transports.modbus_bus` next to the buses that raise it.

The driver knows nothing about meters beyond the register map, so a new model is a new TOML file,
not new code. Failures are reported, never papered over: a read either returns every asked-for
value that the device reports as valid, or raises, so a caller can never mistake a missing
register for zero energy. Values the device flags as "not available" (a declared `invalid`
pattern, e.g. all-FF on an ABB energy register) are left out of the result and listed in
`last_missing`.

Transport (connection, serialisation, inter-frame pauses, close-and-reopen) belongs to the bus,
which several devices share (`edge.transports.modbus_bus.bus_for`). Backoff belongs to the
device: after repeated transport failures a device waits min(2 s x failures, 300 s) (OpenEMS)
before it touches the bus again, so a dead unit costs its neighbours on the line nothing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from pymodbus.client.base import ModbusBaseClient

from edge.drivers.register_map import ReadBlock, RegisterMap, decode_block, plan_reads
from edge.transports.modbus_bus import (
    EXCEPTION_NAMES,
    ClientBus,
    DeviceUnavailableError,
    ModbusBus,
    bus_for,
)

__all__ = ["EXCEPTION_NAMES", "DeviceUnavailableError", "ModbusDevice"]

#: Backoff after failures, as OpenEMS: min(2 s x consecutive failures, 300 s).
BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 300.0


class ModbusDevice:
    """One Modbus unit read through a register map.

    Preferred: `ModbusDevice(register_map, bus=bus, unit_id=2)` with a bus from
    `edge.transports.modbus_bus` (`bus_for(serial_port=...)`, `SerialBus`, `TcpBus`).
    Kept for existing callers: `ModbusDevice(register_map, host, port, unit_id)` uses the shared
    `TcpBus` for host:port (`bus_for(host=...)`, so two devices behind one gateway share one TCP
    connection), and `client=` wraps an already configured pymodbus client in a private bus.
    `unit_id` defaults to the map's `default_unit`.

    Backoff: transport failures (no answer, garbled answer, lost port) are counted; a Modbus
    exception response is an answer and resets the count. The first `backoff_grace` failures in a
    row are retried on the next read without waiting (one lost frame is common on RS-485); from
    then on the device waits min(backoff_base_s x failures, backoff_max_s) after each failure and
    raises DeviceUnavailableError("... backing off for N s") meanwhile, without touching the bus.
    `backoff_base_s=None` (default) means 2 s for devices given `bus=` and no backoff for the
    legacy host/port and client= forms, which keep their earlier behaviour (every read tries).
    Backoff runs on the real monotonic clock (`monotonic=`), not on a simulated one: it is about
    bus time.
    """

    def __init__(
        self,
        register_map: RegisterMap,
        host: str | None = None,
        port: int = 502,
        unit_id: int | None = None,
        timeout_s: float = 1.0,
        retries: int = 1,
        *,
        bus: ModbusBus | None = None,
        client: ModbusBaseClient | None = None,
        backoff_base_s: float | None = None,
        backoff_max_s: float = BACKOFF_MAX_S,
        backoff_grace: int = 1,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        unit = register_map.default_unit if unit_id is None else unit_id
        if not 0 <= unit <= 255:
            raise ValueError(f"unit id {unit} is outside 0..255")
        if backoff_base_s is None:
            backoff_base_s = BACKOFF_BASE_S if bus is not None else 0.0
        if backoff_base_s < 0 or backoff_max_s < 0 or backoff_grace < 0:
            raise ValueError("backoff settings must be >= 0")
        if bus is None:
            if client is not None:
                bus = ClientBus(f"{host}:{port}", timeout_s, retries, client=client)
            elif host is not None:
                bus = bus_for(host=host, port=port, timeout_s=timeout_s, retries=retries)
            else:
                raise ValueError("ModbusDevice needs bus= (or host= and port=)")
        elif host is not None or client is not None:
            raise ValueError("give either bus= or host/port (or client=), not both")
        self.register_map = register_map
        self.bus: ModbusBus = bus
        self.host = host if host is not None else bus.name
        self.port = port
        self.unit_id = unit
        self.timeout_s = getattr(bus, "timeout_s", timeout_s)
        self.retries = getattr(bus, "retries", retries)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.backoff_grace = backoff_grace
        self._monotonic = monotonic
        self._plans: dict[tuple[str, ...] | None, list[ReadBlock]] = {}
        self._lock = asyncio.Lock()
        #: Transport failures in a row (reset by any answer).
        self.consecutive_failures = 0
        self._retry_at = -math.inf
        self._last_reason = ""
        #: Quantities the device reported as "not available" in the last successful read.
        self.last_missing: tuple[str, ...] = ()

    @property
    def endpoint(self) -> str:
        """Where this device is, for messages: "127.0.0.1:5020 unit 1", "/dev/ttyUSB0 unit 2"."""
        return f"{self.bus.name} unit {self.unit_id}"

    @property
    def connected(self) -> bool:
        """Whether the underlying bus currently has a connection."""
        return self.bus.connected

    @property
    def backoff_remaining_s(self) -> float:
        """Seconds until the device will touch the bus again (0 when not backing off)."""
        return max(0.0, self._retry_at - self._monotonic())

    async def connect(self) -> None:
        """Open the bus connection; raise DeviceUnavailableError if that fails."""
        await self.bus.connect()

    async def close(self) -> None:
        """Close the bus connection (safe to call more than once; the next read reopens it).

        On a shared bus this closes the connection for every device on it; they reopen it on
        their next read.
        """
        await self.bus.close()

    async def __aenter__(self) -> ModbusDevice:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def read(self, names: list[str] | None = None) -> dict[str, float]:
        """Read `names` (default: the map's measurements) and return their scaled values.

        Quantities the device reports as not available (declared `invalid` pattern) are left
        out of the result and listed in `last_missing`. Raises DeviceUnavailableError on
        timeout, garbled answer, connection failure, a Modbus exception response or while
        backing off; RegisterMapError if a name is not in the map.
        """
        key = None if names is None else tuple(names)
        plan = self._plans.get(key)
        if plan is None:
            plan = plan_reads(self.register_map, names)
            self._plans[key] = plan
        async with self._lock:  # one read of this device at a time
            self._check_backoff()
            decoded: dict[str, float | None] = {}
            try:
                for block in plan:
                    words = await self.bus.read_registers(
                        block.table, block.address, block.count, self.unit_id
                    )
                    decoded.update(decode_block(self.register_map, block, words))
            except DeviceUnavailableError as exc:
                if exc.exception_code is None:
                    self._record_failure(exc.reason)
                else:
                    self.consecutive_failures = 0  # it answered: alive, just refused this read
                raise
            self.consecutive_failures = 0
            self._retry_at = -math.inf
        self.last_missing = tuple(n for n, v in decoded.items() if v is None)
        values = {n: v for n, v in decoded.items() if v is not None}
        return values if names is None else {n: values[n] for n in names if n in values}

    # ------------------------------------------------------------------ backoff

    def backoff_for(self, failures: int) -> float:
        """Seconds to wait after `failures` transport failures in a row (0 within the grace)."""
        if failures <= self.backoff_grace or self.backoff_base_s == 0:
            return 0.0
        return min(self.backoff_base_s * failures, self.backoff_max_s)

    def _record_failure(self, reason: str) -> None:
        self.consecutive_failures += 1
        self._last_reason = reason
        wait = self.backoff_for(self.consecutive_failures)
        if wait > 0:
            self._retry_at = self._monotonic() + wait

    def _check_backoff(self) -> None:
        remaining = self._retry_at - self._monotonic()
        if remaining > 0:
            raise DeviceUnavailableError(
                f"{self.endpoint} failed {self.consecutive_failures} times in a row "
                f"(last: {self._last_reason}); backing off for {math.ceil(remaining)} s"
            )
