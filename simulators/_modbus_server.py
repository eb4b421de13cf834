"""Shared pymodbus glue of the Modbus simulators (meter, generic device, SunSpec).

Owns: building `SimDevice` tables from register maps (`register_block`, `table_simdata`,
`map_sim_device`, `write_quantities`), the unit list with its catch-all unit 0 (`unit_sims`),
the outgoing-frame hook keyed by unit id (`unit_tracer`), and starting / stopping servers
(`serve_tcp` binds port 0 and reads back the bound port, `serve_rtu`, `shutdown`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.base import ModbusBaseServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simutils import DataType

from edge.drivers.register_map import Quantity, RegisterMap, encode, register_count

TracePacket = Callable[[bool, bytes], bytes]
TracePdu = Callable[[bool, Any], Any]
#: What a write request carries to the action hook (None for reads).
Writes = list[int] | list[bool] | None


class _ServesUnit(Protocol):
    def sim_device(self, unit_id: int) -> SimDevice: ...


D = TypeVar("D")
S = TypeVar("S", bound=_ServesUnit)


# ------------------------------------------------------------------------------ tables


def register_block(start: int, count: int, readonly: bool = True) -> SimData:
    """One block of `count` holding/input registers from `start`, all 0. Read-only blocks
    answer writes with exception 2 before the action hook sees them; a writable block leaves
    the decision (and the exception code) to the hook."""
    return SimData(start, count=count, values=0, datatype=DataType.REGISTERS, readonly=readonly)


def table_simdata(quantities: list[Quantity], strict_holes: bool = False) -> list[SimData]:
    """Read-only register blocks for one table.

    Default: one block from the lowest to the highest mapped register (holes read as 0).
    `strict_holes`: one block per run of mapped registers, so a read that spans an unmapped
    register gets exception 2 (illegal data address), as some real devices answer.
    """
    if not quantities:  # pymodbus needs every table to exist; serve one zero register
        return [register_block(0, 1)]
    spans = sorted((q.address, q.address + register_count(q.type)) for q in quantities)
    if not strict_holes:
        spans = [(spans[0][0], max(end for _, end in spans))]
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [register_block(start, end - start) for start, end in merged]


def quantities_in(register_map: RegisterMap, table: str) -> list[Quantity]:
    """The quantities of `register_map` that live in `table` ("input" or "holding")."""
    return [q for q in register_map.quantities.values() if q.table == table]


def map_sim_device(
    register_map: RegisterMap, unit_id: int, action: Any, strict_holes: bool = False
) -> SimDevice:
    """A SimDevice serving `register_map` as `unit_id`: input and holding tables apart (the
    4-tuple form), 16 zero coils and discrete inputs, `action` called on every request."""
    holding = table_simdata(quantities_in(register_map, "holding"), strict_holes)
    inputs = table_simdata(quantities_in(register_map, "input"), strict_holes)
    bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
    return SimDevice(id=unit_id, simdata=(bits, list(bits), holding, inputs), action=action)


def write_quantities(
    register_map: RegisterMap,
    function_code: int,
    start_address: int,
    current_registers: list[int],
    values: Mapping[str, float | None],
) -> None:
    """Encode `values` (by quantity name) into the registers of a request starting at
    `start_address`: the input table for function code 4, else the holding table."""
    table = "input" if function_code == 4 else "holding"
    for q in quantities_in(register_map, table):
        offset = q.address - start_address
        current_registers[offset : offset + register_count(q.type)] = encode(q, values[q.name])


class ActionHook:
    """The pymodbus `SimDevice` action hook: counts `requests`, then asks `_answer`.

    pymodbus calls `_action` on every request to the unit; `_answer` applies faults, refreshes
    `current_registers` and returns an exception code or None (a normal answer).
    """

    requests: int

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: Writes,
    ) -> ExcCodes | None:
        """Called by pymodbus on every request: apply faults, then refresh the registers."""
        self.requests += 1
        return self._answer(function_code, start_address, current_registers, set_values)

    def _answer(
        self, function_code: int, start_address: int, registers: list[int], writes: Writes
    ) -> ExcCodes | None:
        raise NotImplementedError


# ------------------------------------------------------------------------------ units


def unit_sims(devices: Mapping[int, S], what: str = "device") -> list[SimDevice]:
    """SimDevices for `devices` (unit id -> device) plus the catch-all unit 0.

    Unit id 0 in pymodbus catches every id not listed (else it logs a KeyError traceback and
    answers exception 4); the tracers drop its answers, so absent units stay silent as on RS-485.
    """
    if not devices:
        raise ValueError(f"at least one {what} is needed")
    for unit_id in devices:
        if not 1 <= unit_id <= 247:
            raise ValueError(f"unit id {unit_id} is outside 1..247")
    sims = [device.sim_device(unit_id) for unit_id, device in sorted(devices.items())]
    sims.append(
        SimDevice(id=0, simdata=[SimData(0, count=1, values=0, datatype=DataType.REGISTERS)])
    )
    return sims


def unit_tracer(
    devices: Mapping[int, D], unit_at: int, answer: Callable[[D, bytes], bytes]
) -> TracePacket:
    """A trace_packet hook: outgoing frames of unknown units become b"" (silence), the others
    go through `answer(device, frame)`. `unit_at`: the unit id's byte (RTU 0, TCP 6)."""

    def trace_packet(sending: bool, data: bytes) -> bytes:
        if not sending or len(data) <= unit_at:
            return data
        device = devices.get(data[unit_at])
        if device is None:
            return b""
        return answer(device, data)

    return trace_packet


# ------------------------------------------------------------------------------ servers


async def serve_tcp(
    sims: Sequence[SimDevice],
    host: str,
    port: int,
    label: str,
    trace_packet: TracePacket,
    trace_pdu: TracePdu | None = None,
) -> tuple[ModbusTcpServer, int]:
    """Start a Modbus TCP server in the background; (server, port actually bound).

    Raises OSError (naming `label`) when the address cannot be bound.
    """
    server = ModbusTcpServer(
        list(sims), address=(host, port), trace_packet=trace_packet, trace_pdu=trace_pdu
    )
    try:
        await server.serve_forever(background=True)
    except RuntimeError as exc:  # pymodbus logs the OSError from bind and raises this instead
        raise OSError(f"{label} cannot listen on {host}:{port}: {exc}") from exc
    sockets = getattr(server.transport, "sockets", None)
    if not sockets:
        await shutdown(server)
        raise OSError(f"{label} on {host}:{port} did not report its socket")
    return server, int(sockets[0].getsockname()[1])


async def serve_rtu(
    sims: Sequence[SimDevice], path: str, label: str, **options: Any
) -> ModbusSerialServer:
    """Start a Modbus RTU server on the serial port `path` in the background.

    `options` go to `ModbusSerialServer` (baudrate, parity, trace hooks...). Raises OSError
    (naming `label`) when the port cannot be opened.
    """
    server = ModbusSerialServer(list(sims), port=path, **options)
    try:
        await server.serve_forever(background=True)
    except RuntimeError as exc:
        raise OSError(f"{label} cannot open {path}: {exc}") from exc
    return server


async def shutdown(server: ModbusBaseServer) -> None:
    """Stop a server: close its listener or serial port and its connections."""
    await server.shutdown()  # type: ignore[no-untyped-call]
