"""Modbus buses: one owner per RS-485 port or Modbus TCP endpoint, shared by its devices.

Owns: the `ModbusBus` protocol (read a block of registers from one unit, write holding
registers to one, or raise `DeviceUnavailableError` with a plain sentence), `TcpBus` (one
persistent Modbus TCP connection per host:port), `SerialBus` (one RTU client per serial port),
the `bus_for` registry that hands every device configured on the same port or host the same bus
object, and `DeviceUnavailableError` itself (re-exported by `edge.drivers.modbus_generic`).

Why one object per wire (devices.md, section 4):
- Two readers on one USB port collide (influxdata/telegraf#7523, jblance/mpp-solar#278): every
  request on a bus goes through one asyncio.Lock, one request at a time.
- Shared RS-485 lines time out without gaps between frames (OpenEMS/openems#3099): a
  `SerialBus` keeps at least max(3.5 character times, 25 ms) of silence between frames and
  200 ms when the next request goes to another unit id (mbmd does this for Eastron meters).
- Some devices accept a single TCP client (evcc-io/evcc#4954): a `TcpBus` keeps one
  connection open for all unit ids behind a host:port.
- On a transport error the connection is closed and reopened on the next request (mbmd, evcc,
  Telegraf). A USB adapter that was pulled shows as "serial port /dev/ttyUSB0 is gone" until the
  path exists again; then the bus reopens it without a restart.

Per-device backoff lives in `ModbusDevice`, not here: a bus never refuses a request, so a dead
unit cannot make the bus refuse its neighbours.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol, runtime_checkable

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from edge.drivers.register_map import MAX_READ_REGISTERS, Table

EXCEPTION_NAMES: Final[dict[int, str]] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}
#: Minimum silence between two frames on a shared RS-485 line (OpenEMS/openems#3099).
MIN_INTER_FRAME_PAUSE_S: Final = 0.025
#: Silence before talking to another unit id; mbmd waits this long for Eastron meters.
DEFAULT_UNIT_SWITCH_PAUSE_S: Final = 0.2
#: FC16 limit per request (Modbus application protocol: 123 registers).
MAX_WRITE_REGISTERS: Final = 123


class DeviceUnavailableError(Exception):
    """The device gave no usable answer this time. `reason` is a plain sentence for logs and UIs.

    `exception_code` is set when the device answered with a Modbus exception (2 often means the
    register does not exist on this variant, not that the device is broken); it is None for
    timeouts, garbled answers, connection failures and backoff.
    """

    def __init__(self, reason: str, exception_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exception_code = exception_code


@runtime_checkable
class ModbusBus(Protocol):
    """Something that reads registers from unit ids on one wire or endpoint."""

    @property
    def name(self) -> str:
        """Where the bus is, for messages: "/dev/ttyUSB0" or "192.168.1.20:502"."""
        ...

    @property
    def connected(self) -> bool:
        """Whether the port or connection is open right now."""
        ...

    async def read_registers(
        self, table: Table, address: int, count: int, unit_id: int
    ) -> list[int]:
        """Read `count` registers from `address` (FC04 for "input", FC03 for "holding").

        Raises DeviceUnavailableError with a plain message on any failure.
        """
        ...

    async def write_registers(self, address: int, values: Sequence[int], unit_id: int) -> None:
        """Write `values` to holding registers from `address` (FC16).

        Raises DeviceUnavailableError with a plain message on any failure.
        """
        ...

    async def connect(self) -> None:
        """Open the port or connection now; raise DeviceUnavailableError if that fails."""
        ...

    async def close(self) -> None:
        """Close the port or connection; the next request reopens it."""
        ...


def char_time_s(baudrate: int, parity: str = "N", stopbits: int = 1, bytesize: int = 8) -> float:
    """Seconds one character takes on the wire: start bit + data + parity + stop bits."""
    bits = 1 + bytesize + (0 if parity == "N" else 1) + stopbits
    return bits / baudrate


class ClientBus:
    """A bus around one pymodbus async client: lock, pauses, retries, close-and-reopen.

    `TcpBus` and `SerialBus` are this with their own client and messages. It is usable on its own
    with an already configured client (what `ModbusDevice(client=...)` does).
    """

    def __init__(
        self,
        name: str,
        timeout_s: float,
        retries: int,
        inter_frame_pause_s: float = 0.0,
        unit_switch_pause_s: float = 0.0,
        *,
        client: ModbusBaseClient | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if inter_frame_pause_s < 0 or unit_switch_pause_s < 0:
            raise ValueError("pauses must be >= 0")
        self._name = name
        self.timeout_s = timeout_s
        self.retries = retries
        self.inter_frame_pause_s = inter_frame_pause_s
        self.unit_switch_pause_s = unit_switch_pause_s
        self._client = client
        self._lock = asyncio.Lock()
        self._last_unit: int | None = None
        self._quiet_since = -math.inf
        self._rx_seen = False
        #: Frames sent on this bus, retries included (for status pages and tests).
        self.requests = 0

    # ------------------------------------------------------------------ hooks

    def _make_client(self) -> ModbusBaseClient:
        raise NotImplementedError("ClientBus needs client= or a subclass")

    def _check_openable(self) -> None:
        """Raise DeviceUnavailableError if opening cannot work right now (serial: path gone)."""

    def _open_failure(self) -> str:
        return f"cannot connect to {self._name}"

    def _endpoint(self, unit_id: int) -> str:
        return f"{self._name} unit {unit_id}"

    # ------------------------------------------------------------------ public API

    @property
    def name(self) -> str:
        """Where the bus is, for messages."""
        return self._name

    @property
    def connected(self) -> bool:
        """Whether the underlying client currently has a connection."""
        return self._client is not None and bool(self._client.connected)

    async def connect(self) -> None:
        """Open the connection now; raise DeviceUnavailableError if that fails."""
        async with self._lock:
            await self._ensure_open()

    async def close(self) -> None:
        """Close the connection (safe to call more than once); the next request reopens it."""
        async with self._lock:
            self._drop()

    async def read_registers(
        self, table: Table, address: int, count: int, unit_id: int
    ) -> list[int]:
        """Read `count` registers of `table` at `address` from `unit_id`.

        A request that gets no answer, or a garbled one, is retried `retries` times on the same
        connection (after the inter-frame pause); when every attempt failed, the connection is
        closed and DeviceUnavailableError raised. A Modbus exception response is an answer: it
        raises at once with `exception_code` set and keeps the connection.
        """
        if table not in ("input", "holding"):
            raise ValueError(f"table must be 'input' or 'holding', not {table!r}")
        if not 1 <= count <= MAX_READ_REGISTERS:
            raise ValueError(f"count must be 1..{MAX_READ_REGISTERS}, not {count}")
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit id {unit_id} is outside 0..255")
        function_code = 4 if table == "input" else 3

        def send(client: ModbusBaseClient) -> Awaitable[ModbusPDU]:
            if table == "input":
                return client.read_input_registers(address, count=count, device_id=unit_id)
            return client.read_holding_registers(address, count=count, device_id=unit_id)

        response = await self._transact(unit_id, send)
        return self._registers(response, function_code, address, count, unit_id)

    async def write_registers(self, address: int, values: Sequence[int], unit_id: int) -> None:
        """Write `values` (16-bit words) to holding registers of `unit_id` from `address`, with
        FC16 (the function SunSpec requires for writes, also for a single register).

        Same lock, pauses and retries as a read: a write that got no answer is sent again,
        which is safe for the setpoints this is used for (writing a setpoint twice leaves the
        same setting). A Modbus exception answer raises at once with `exception_code` set (2:
        the register is not writable or does not exist; 3: the value is refused).
        """
        words = [int(v) for v in values]
        if not 1 <= len(words) <= MAX_WRITE_REGISTERS:
            raise ValueError(
                f"a write carries 1..{MAX_WRITE_REGISTERS} registers, not {len(words)}"
            )
        if not all(0 <= w <= 0xFFFF for w in words):
            raise ValueError("register values must be 16-bit words (0..65535)")
        if not 0 <= address <= 0xFFFF or address + len(words) > 0x10000:
            raise ValueError(f"a write of {len(words)} at {address} is outside 0..65535")
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit id {unit_id} is outside 0..255")

        def send(client: ModbusBaseClient) -> Awaitable[ModbusPDU]:
            return client.write_registers(address, words, device_id=unit_id)

        response = await self._transact(unit_id, send)
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise DeviceUnavailableError(
                f"Modbus exception {code} ({name}) for a write of {len(words)} registers at "
                f"address 0x{address:04X} (FC16) to {self._endpoint(unit_id)}",
                exception_code=code,
            )

    async def _transact(
        self, unit_id: int, send: Callable[[ModbusBaseClient], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        """One request under the bus lock: open, pause, send, retry on no or garbled answers.

        A request that gets no answer, or a garbled one, is retried `retries` times on the same
        connection (after the inter-frame pause); when every attempt failed, the connection is
        closed and DeviceUnavailableError raised. Returns the response PDU (which may be a
        Modbus exception answer: the caller decides what that means).
        """
        async with self._lock:
            await self._ensure_open()
            client = self._client
            assert client is not None
            reason = ""
            for _attempt in range(self.retries + 1):
                await self._pause(unit_id)
                self.requests += 1
                self._rx_seen = False
                try:
                    response: ModbusPDU = await send(client)
                except ModbusIOException as exc:
                    if "No response" in str(exc) and self._rx_seen:
                        reason = (
                            f"garbled answer from {self._endpoint(unit_id)}: no valid frame "
                            f"within {self.timeout_s:g} s (bad CRC, wrong line settings or "
                            "noise on the line)"
                        )
                    elif "No response" in str(exc):
                        reason = (
                            f"no response from {self._endpoint(unit_id)} "
                            f"within {self.timeout_s:g} s"
                        )
                    else:
                        reason = f"bad response from {self._endpoint(unit_id)}: {exc}"
                    continue
                except (ConnectionException, OSError) as exc:
                    self._drop()
                    self._check_openable()
                    raise DeviceUnavailableError(
                        f"connection to {self._endpoint(unit_id)} lost: {exc}"
                    ) from exc
                except ModbusException as exc:
                    self._drop()
                    raise DeviceUnavailableError(
                        f"Modbus error from {self._endpoint(unit_id)}: {exc}"
                    ) from exc
                except BaseException:  # cancelled mid-frame: a late answer must not linger
                    self._drop()
                    raise
                finally:
                    self._quiet_since = time.monotonic()
                    self._last_unit = unit_id
                return response
            self._drop()
            self._check_openable()  # a vanished adapter looks like a timeout: say what it is
            raise DeviceUnavailableError(reason)

    # ------------------------------------------------------------------ internals

    def _registers(
        self, response: ModbusPDU, function_code: int, address: int, count: int, unit_id: int
    ) -> list[int]:
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise DeviceUnavailableError(
                f"Modbus exception {code} ({name}) at address 0x{address:04X} "
                f"(FC{function_code:02d}, {count} registers) from {self._endpoint(unit_id)}",
                exception_code=code,
            )
        registers = [int(r) for r in response.registers]
        if len(registers) != count:
            self._drop()
            raise DeviceUnavailableError(
                f"{self._endpoint(unit_id)} returned {len(registers)} registers for a read of "
                f"{count} at address 0x{address:04X}"
            )
        return registers

    async def _pause(self, unit_id: int) -> None:
        """Keep the line quiet for the inter-frame pause (longer when the unit id changes)."""
        gap = self.inter_frame_pause_s
        if self._last_unit is not None and unit_id != self._last_unit:
            gap = max(gap, self.unit_switch_pause_s)
        wait = self._quiet_since + gap - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _ensure_open(self) -> None:
        if self._client is not None and self._client.connected:
            self._check_still_there()
            return
        self._check_openable()
        if self._client is None:
            self._client = self._make_client()
        try:
            ok = await self._client.connect()
        except (OSError, ModbusException) as exc:  # TimeoutError is an OSError
            self._drop()
            raise DeviceUnavailableError(f"{self._open_failure()}: {exc}") from exc
        if not ok:
            # pymodbus only logs why (refused, unreachable, busy); it returns False.
            self._drop()
            self._check_openable()
            raise DeviceUnavailableError(self._open_failure())
        self._quiet_since = time.monotonic()  # the line settles after opening
        self._last_unit = None

    def _check_still_there(self) -> None:
        """Raise if an open connection is known to be dead (serial: the path vanished)."""

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus hook on every byte stream: notes that bytes came back (garbled or not)."""
        if not sending and data:
            self._rx_seen = True
        return data

    def _drop(self) -> None:
        """Close the client; keep the object so the next request reconnects it."""
        if self._client is not None:
            self._client.close()


class TcpBus(ClientBus):
    """Modbus TCP to every unit id behind one host:port, over ONE persistent connection.

    Gateways and some inverters accept a single client; sharing one connection between the
    devices behind an endpoint avoids kicking each other off (evcc-io/evcc#4954).
    """

    def __init__(
        self, host: str, port: int = 502, timeout_s: float = 1.0, retries: int = 1
    ) -> None:
        super().__init__(f"{host}:{port}", timeout_s, retries)
        self.host = host
        self.port = port

    def _make_client(self) -> ModbusBaseClient:
        return AsyncModbusTcpClient(
            self.host,
            port=self.port,
            timeout=self.timeout_s,
            retries=0,  # the bus retries itself, after the inter-frame pause
            reconnect_delay=0,  # no background reconnects: the next request reconnects
            name=self.name,
            trace_packet=self._trace_packet,
        )

    def _open_failure(self) -> str:
        return (
            f"cannot connect to {self.name} "
            f"(refused, unreachable or no answer within {self.timeout_s:g} s)"
        )


class SerialBus(ClientBus):
    """Modbus RTU on one serial port (an RS-485 line with one or more units).

    `inter_frame_pause_s=None` picks max(3.5 character times, 25 ms); `unit_switch_pause_s` is
    the silence before a request to a different unit id than the last one (200 ms by default,
    as mbmd for Eastron meters). Every unit on one line must use the same baud rate and framing.
    """

    def __init__(
        self,
        port_path: str | os.PathLike[str],
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        timeout_s: float = 1.0,
        retries: int = 1,
        inter_frame_pause_s: float | None = None,
        unit_switch_pause_s: float = DEFAULT_UNIT_SWITCH_PAUSE_S,
        bytesize: int = 8,
    ) -> None:
        if parity not in ("N", "E", "O"):
            raise ValueError(f"parity must be N, E or O, not {parity!r}")
        if stopbits not in (1, 2):
            raise ValueError(f"stopbits must be 1 or 2, not {stopbits!r}")
        if baudrate <= 0:
            raise ValueError("baudrate must be positive")
        path = os.fspath(port_path)
        if inter_frame_pause_s is None:
            inter_frame_pause_s = max(
                3.5 * char_time_s(baudrate, parity, stopbits, bytesize), MIN_INTER_FRAME_PAUSE_S
            )
        super().__init__(path, timeout_s, retries, inter_frame_pause_s, unit_switch_pause_s)
        self.port_path = path
        self.baudrate = baudrate
        self.parity = parity
        self.stopbits = stopbits
        self.bytesize = bytesize

    @property
    def framing(self) -> str:
        """Line settings in the usual short form, e.g. "9600 8N1"."""
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"

    def _make_client(self) -> ModbusBaseClient:
        return AsyncModbusSerialClient(
            self.port_path,
            baudrate=self.baudrate,
            bytesize=self.bytesize,
            parity=self.parity,
            stopbits=self.stopbits,
            timeout=self.timeout_s,
            retries=0,
            reconnect_delay=0,
            name=self.port_path,
            trace_packet=self._trace_packet,
        )

    def _gone(self) -> DeviceUnavailableError:
        return DeviceUnavailableError(f"serial port {self.port_path} is gone")

    def _check_openable(self) -> None:
        if not os.path.exists(self.port_path):
            raise self._gone()
        if not os.access(self.port_path, os.R_OK | os.W_OK):
            raise DeviceUnavailableError(
                f"no permission to open serial port {self.port_path} "
                "(is the user in the dialout group?)"
            )

    def _check_still_there(self) -> None:
        if not os.path.exists(self.port_path):
            self._drop()
            raise self._gone()

    def _open_failure(self) -> str:
        return (
            f"cannot open serial port {self.port_path} at {self.framing} "
            "(in use by another program, or not a serial device)"
        )


# --------------------------------------------------------------------------------------------
# Registry: one bus per port or endpoint
# --------------------------------------------------------------------------------------------

#: Buses per event loop: pymodbus clients and asyncio locks belong to the loop they run in.
_BUSES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, ...], ClientBus]] = (
    weakref.WeakKeyDictionary()
)
_BUSES_WITHOUT_LOOP: dict[tuple[str, ...], ClientBus] = {}


def _registry() -> dict[tuple[str, ...], ClientBus]:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return _BUSES_WITHOUT_LOOP
    return _BUSES.setdefault(loop, {})


def bus_for(
    *,
    host: str | None = None,
    port: int = 502,
    serial_port: str | os.PathLike[str] | None = None,
    baudrate: int = 9600,
    parity: str = "N",
    stopbits: int = 1,
    timeout_s: float = 1.0,
    retries: int = 1,
    inter_frame_pause_s: float | None = None,
    unit_switch_pause_s: float = DEFAULT_UNIT_SWITCH_PAUSE_S,
) -> TcpBus | SerialBus:
    """The bus for `host:port` (Modbus TCP) or `serial_port` (RTU), created on first use.

    Every device configured on the same port or endpoint gets the same object, so requests on
    one wire are serialised and a TCP endpoint sees one connection. The first caller's timeout,
    retries and pauses apply to the bus (they belong to the wire, not to a unit). Asking for a
    serial port that is already open with other line settings raises ValueError: all units on
    one RS-485 line must share baud rate, parity and stop bits.
    """
    if (host is None) == (serial_port is None):
        raise ValueError("give exactly one of host= or serial_port=")
    registry = _registry()
    if host is not None:
        key: tuple[str, ...] = ("tcp", host, str(port))
        bus = registry.get(key)
        if bus is None:
            bus = registry[key] = TcpBus(host, port, timeout_s, retries)
        assert isinstance(bus, TcpBus)
        return bus
    assert serial_port is not None
    path = os.path.normpath(os.fspath(serial_port))
    key = ("serial", path)
    existing = registry.get(key)
    if existing is None:
        bus = registry[key] = SerialBus(
            path,
            baudrate,
            parity,
            stopbits,
            timeout_s,
            retries,
            inter_frame_pause_s,
            unit_switch_pause_s,
        )
        return bus
    assert isinstance(existing, SerialBus)
    wanted = f"{baudrate} 8{parity}{stopbits}"
    if existing.framing != wanted:
        raise ValueError(
            f"serial port {path} is already used at {existing.framing}; a device on the same "
            f"line cannot use {wanted} (all units on one RS-485 line share the line settings)"
        )
    return existing


async def close_buses() -> None:
    """Close every bus of the running event loop (e.g. at agent shutdown) and forget them."""
    registry = _registry()
    buses = list(registry.values())
    registry.clear()
    for bus in buses:
        await bus.close()
