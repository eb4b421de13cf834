"""Generic Modbus reader: reads the quantities of a register map from one device.

Owns: `ModbusDevice` (connection handling, planned block reads, decoding) and
`DeviceUnavailableError` (one plain-language reason why a read gave no data).

The driver knows nothing about meters beyond the register map, so a new meter model is a new
TOML file, not new code. Failures are reported, never papered over: a read either returns every
asked-for value or raises, so a caller can never mistake a missing register for zero energy.
After a timeout or a lost connection the client is closed and reopened on the next read (the
usual cure for a confused serial gateway or a half-open TCP connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from edge.drivers.register_map import ReadBlock, RegisterMap, decode_block, plan_reads

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class DeviceUnavailableError(Exception):
    """The device gave no usable answer this time. `reason` is a plain sentence for logs and UIs.

    `exception_code` is set when the device answered with a Modbus exception (2 often means the
    register does not exist on this variant, not that the device is broken); it is None for
    timeouts and connection failures.
    """

    def __init__(self, reason: str, exception_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exception_code = exception_code


class ModbusDevice:
    """One Modbus unit read through a register map.

    By default a Modbus TCP client to `host:port` is created. Pass `client=` to use an already
    configured pymodbus async client instead (e.g. AsyncModbusSerialClient for RS-485); `host`
    and `port` are then only used in messages. The device closes and reopens that client after
    transport failures.
    """

    def __init__(
        self,
        register_map: RegisterMap,
        host: str,
        port: int,
        unit_id: int,
        timeout_s: float = 1.0,
        retries: int = 1,
        *,
        client: ModbusBaseClient | None = None,
    ) -> None:
        if not 0 <= unit_id <= 255:
            raise ValueError(f"unit id {unit_id} is outside 0..255")
        self.register_map = register_map
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.timeout_s = timeout_s
        self.retries = retries
        self._client: ModbusBaseClient = client or AsyncModbusTcpClient(
            host,
            port=port,
            timeout=timeout_s,
            retries=retries,
            reconnect_delay=0,  # no background reconnects: the next read() reconnects
            name=f"{host}:{port}",
        )
        self._plans: dict[tuple[str, ...] | None, list[ReadBlock]] = {}
        self._lock = asyncio.Lock()

    @property
    def endpoint(self) -> str:
        """Where this device is, for messages: "127.0.0.1:5020 unit 1"."""
        return f"{self.host}:{self.port} unit {self.unit_id}"

    @property
    def connected(self) -> bool:
        """Whether the underlying client currently has a connection."""
        return bool(self._client.connected)

    async def connect(self) -> None:
        """Open the connection; raise DeviceUnavailableError if that fails."""
        try:
            ok = await self._client.connect()
        except (OSError, ModbusException) as exc:  # TimeoutError is an OSError
            raise DeviceUnavailableError(f"cannot connect to {self.endpoint}: {exc}") from exc
        if not ok:
            # pymodbus only logs why (refused, unreachable, timeout); it returns False.
            raise DeviceUnavailableError(
                f"cannot connect to {self.host}:{self.port} "
                f"(refused, unreachable or no answer within {self.timeout_s:g} s)"
            )

    async def close(self) -> None:
        """Close the connection (safe to call more than once)."""
        self._client.close()

    async def __aenter__(self) -> ModbusDevice:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def read(self, names: list[str] | None = None) -> dict[str, float]:
        """Read `names` (default: the map's measurements) and return their scaled values.

        Raises DeviceUnavailableError on timeout, connection failure or a Modbus exception
        response; RegisterMapError if a name is not in the map.
        """
        key = None if names is None else tuple(names)
        plan = self._plans.get(key)
        if plan is None:
            plan = plan_reads(self.register_map, names)
            self._plans[key] = plan
        async with self._lock:  # one request at a time per device, as on a shared bus
            if not self._client.connected:
                await self.connect()
            values: dict[str, float] = {}
            for block in plan:
                values.update(decode_block(self.register_map, block, await self._read(block)))
        return values if names is None else {name: values[name] for name in names}

    async def _read(self, block: ReadBlock) -> Sequence[int]:
        """One FC03/FC04 request; translate every failure into DeviceUnavailableError."""
        reader = (
            self._client.read_input_registers
            if block.table == "input"
            else self._client.read_holding_registers
        )
        try:
            response: Any = await reader(block.address, count=block.count, device_id=self.unit_id)
        except ModbusIOException as exc:
            self._client.close()
            if "No response" in str(exc):
                reason = f"no response from {self.endpoint} within {self.timeout_s:g} s"
            else:
                reason = f"bad response from {self.endpoint}: {exc}"
            raise DeviceUnavailableError(reason) from exc
        except (ConnectionException, OSError) as exc:
            self._client.close()
            raise DeviceUnavailableError(f"connection to {self.endpoint} lost: {exc}") from exc
        except ModbusException as exc:
            self._client.close()
            raise DeviceUnavailableError(f"Modbus error from {self.endpoint}: {exc}") from exc
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = _EXCEPTION_NAMES.get(code, "unknown")
            raise DeviceUnavailableError(
                f"Modbus exception {code} ({name}) at address 0x{block.address:04X} "
                f"(FC{block.function_code:02d}, {block.count} registers) from {self.endpoint}",
                exception_code=code,
            )
        registers = list(response.registers)
        if len(registers) != block.count:
            self._client.close()
            raise DeviceUnavailableError(
                f"{self.endpoint} returned {len(registers)} registers for a read of "
                f"{block.count} at address 0x{block.address:04X}"
            )
        return registers
