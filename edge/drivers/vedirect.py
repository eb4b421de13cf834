"""Victron VE.Direct text protocol: an incremental block parser and a serial-port reader.

Owns: `VeDirectParser` (pure, no I/O: bytes in, checked blocks out), `Block` and
`decode_value` (raw label/value text to typed values), `VeDirectDevice` (reads a VE.Direct port
in a background thread, keeps the latest valid data, answers `read()` in plain units) and
`QUANTITIES` (what each plain name means).

Wire format (devices.md section 3): 19200 baud 8N1; about once a second the device sends a block
of fields, each CR LF label TAB value; the last field is `Checksum` TAB and one byte chosen so
that all bytes of the block sum to 0 mod 256. HEX-protocol frames (':' ... LF) may be
interleaved anywhere except in the checksum byte slot; they are not part of the sum.

The 8-bit sum misses some corruptions (two flipped MSBs cancel out), so every line is also
checked against the grammar: labels are short runs of letters, digits, '#' and '_', values are
short printable ASCII, known numeric fields must parse. A block failing either check is dropped
and counted; the parser then resynchronises on the next CR LF.

Energy: H19 (yield total, 0.01 kWh) is the lifetime counter, but it is user-resettable: a drop
to about zero is a reset that the agent must book as such, never a negative yield.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final, Literal

from edge.drivers.modbus_generic import DeviceUnavailableError

_log = logging.getLogger(__name__)

_CR: Final = 0x0D
_LF: Final = 0x0A
_TAB: Final = 0x09
_COLON: Final = 0x3A
_CHECKSUM_LABEL: Final = "Checksum"
#: Victron's reference frame handler: names up to 8 characters, values up to 32.
MAX_LABEL_LEN: Final = 9
MAX_VALUE_LEN: Final = 32
#: Protocol 3.30+ allows 22 fields per block; leave room for newer firmware.
MAX_FIELDS: Final = 40
#: A HEX frame is ':' + command nibble + up to ~34 payload bytes in hex + checksum + LF.
MAX_HEX_LEN: Final = 128
_LABEL_CHARS: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789#_")
_HEX_CHARS: Final = frozenset(b"0123456789ABCDEFabcdef")
#: Printable ASCII except ':' (which always opens a HEX frame).
_VALUE_CHARS: Final = frozenset(range(0x20, 0x7F)) - {_COLON}

#: "Not available" as some devices send it (BMV SOC before the first synchronisation).
NOT_AVAILABLE: Final = "---"

#: Labels whose value is a decimal integer (V, I in mV/mA; H19..H23 in 0.01 kWh or W; ...).
_INT_LABELS: Final = frozenset(
    {
        "V", "V2", "V3", "VS", "VM", "DM", "VPV", "PPV", "I", "I2", "I3", "IL", "P", "CE",
        "SOC", "TTG", "T", "CS", "MPPT", "ERR", "HSDS", "MON", "MODE", "AC_OUT_V", "AC_OUT_I",
        "AC_OUT_S", "WARN", "AR",
        "H1", "H2", "H3", "H4", "H5", "H6", "H7", "H8", "H9", "H10", "H11", "H12", "H13",
        "H14", "H15", "H16", "H17", "H18", "H19", "H20", "H21", "H22", "H23",
    }
)  # fmt: skip
#: Labels whose value is hexadecimal with a 0x prefix.
_HEX_LABELS: Final = frozenset({"PID", "OR"})
#: Labels whose value is ON/OFF.
_BOOL_LABELS: Final = frozenset({"LOAD", "Alarm", "Relay"})

Value = int | bool | str | None


def decode_value(label: str, value: str) -> Value:
    """Typed value of one field: int for numbers (PID and OR are hex), bool for ON/OFF,
    None for "---" (not available), str for text (FW, SER#, unknown labels).

    Raises ValueError if a known numeric or ON/OFF field does not parse.
    """
    if label in _INT_LABELS:
        if value == NOT_AVAILABLE:
            return None
        return int(value, 10)
    if label in _HEX_LABELS:
        if not value.lower().startswith("0x") or len(value) < 3:
            raise ValueError(f"{label} value {value!r} is not 0x-prefixed hex")
        return int(value[2:], 16)
    if label in _BOOL_LABELS:
        if value == "ON":
            return True
        if value == "OFF":
            return False
        raise ValueError(f"{label} value {value!r} is neither ON nor OFF")
    return value


@dataclass(frozen=True, slots=True)
class Block:
    """One checked block: raw fields in wire order (without Checksum) and typed values."""

    fields: Mapping[str, str]
    values: Mapping[str, Value]

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> Block:
        """Decode `fields`; raise ValueError if a known field does not parse."""
        raw = dict(fields)
        return cls(raw, {label: decode_value(label, value) for label, value in raw.items()})

    def get_int(self, label: str) -> int | None:
        """An integer field, or None if absent or not available."""
        value = self.values.get(label)
        return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(slots=True)
class ParserStats:
    """Counters since the parser was created.

    blocks: valid blocks returned. checksum_errors: complete blocks whose sum was not 0.
    grammar_errors: candidate blocks refused for bad line grammar or an unparsable value (after
    such a refusal the rest of the damaged block usually fails the checksum too, so one damaged
    block may count in both). garbage_bytes: bytes skipped outside any block, including bytes of
    refused candidates and of aborted HEX frames. hex_frames: complete HEX frames stripped.
    """

    blocks: int = 0
    checksum_errors: int = 0
    grammar_errors: int = 0
    garbage_bytes: int = 0
    hex_frames: int = 0


class _State(IntEnum):
    IDLE = 0  # between blocks: waiting for CR LF
    START_LF = 1  # saw CR outside a block, expect LF
    LABEL = 2  # inside a label
    VALUE = 3  # inside a value
    FIELD_LF = 4  # saw CR after a value, expect LF
    CHECKSUM = 5  # after "Checksum" TAB: the next byte, whatever it is, ends the block


class VeDirectParser:
    """Incremental VE.Direct text-protocol parser: `feed()` any chunks, get complete blocks.

    Pure (no I/O, no clock), so the result does not depend on how the stream is chunked.
    """

    def __init__(self) -> None:
        self.stats = ParserStats()
        self._state = _State.IDLE
        self._sum = 0
        self._pending = 0  # bytes in the current candidate (counted as garbage if refused)
        self._label = bytearray()
        self._value = bytearray()
        self._fields: dict[str, str] = {}
        self._in_hex = False
        self._hex_len = 0

    def feed(self, data: bytes) -> list[Block]:
        """Consume `data`; return the blocks completed and checked within it (often none)."""
        out: list[Block] = []
        for byte in data:
            if self._in_hex:
                self._hex_byte(byte)
                continue
            if byte == _COLON and self._state != _State.CHECKSUM:
                self._in_hex = True
                self._hex_len = 1
                continue
            block = self._text_byte(byte)
            if block is not None:
                out.append(block)
        return out

    def reset(self) -> None:
        """Forget any partial block (e.g. after reopening the port); keep the counters."""
        if self._state != _State.IDLE:
            self.stats.garbage_bytes += self._pending
        self._to_idle()
        self._in_hex = False

    # --- HEX frames ---------------------------------------------------------------------------

    def _hex_byte(self, byte: int) -> None:
        if byte == _LF and self._hex_len > 1:
            self._in_hex = False
            self.stats.hex_frames += 1
            return
        if byte in _HEX_CHARS and self._hex_len < MAX_HEX_LEN:
            self._hex_len += 1
            return
        # Not a HEX frame after all (a stray ':' in noise): drop it and what it swallowed, and
        # any block it interrupted, then look at this byte as text from a clean state.
        self._in_hex = False
        self.stats.garbage_bytes += self._hex_len
        if self._state != _State.IDLE:
            self._refuse()
        block = self._text_byte(byte)
        assert block is None  # from IDLE no single byte completes a block

    # --- text protocol ------------------------------------------------------------------------

    def _to_idle(self) -> None:
        self._state = _State.IDLE
        self._sum = 0
        self._pending = 0
        self._label.clear()
        self._value.clear()
        self._fields = {}

    def _refuse(self) -> None:
        """Drop the current candidate for a grammar error."""
        self.stats.grammar_errors += 1
        self.stats.garbage_bytes += self._pending
        self._to_idle()

    def _start(self) -> None:
        """A CR outside a block: maybe the start of a new block."""
        self._to_idle()
        self._state = _State.START_LF
        self._sum = _CR
        self._pending = 1

    def _text_byte(self, byte: int) -> Block | None:
        state = self._state
        if state == _State.IDLE:
            if byte == _CR:
                self._start()
            else:
                self.stats.garbage_bytes += 1
            return None
        self._sum = (self._sum + byte) & 0xFF
        self._pending += 1
        if state == _State.START_LF:
            if byte == _LF:
                self._state = _State.LABEL
            else:  # a lone CR: garbage; the byte after it may start a block itself
                self.stats.garbage_bytes += 1
                self._to_idle()
                if byte == _CR:
                    self._start()
                else:
                    self.stats.garbage_bytes += 1
        elif state == _State.LABEL:
            if byte == _TAB:
                self._end_label()
            elif byte in _LABEL_CHARS and len(self._label) < MAX_LABEL_LEN:
                self._label.append(byte)
            else:
                self._grammar_error(byte)
        elif state == _State.VALUE:
            if byte == _CR:
                self._state = _State.FIELD_LF
            elif byte in _VALUE_CHARS and len(self._value) < MAX_VALUE_LEN:
                self._value.append(byte)
            else:
                self._grammar_error(byte)
        elif state == _State.FIELD_LF:
            if byte == _LF:
                self._end_field()
            else:
                self._grammar_error(byte)
        else:  # CHECKSUM: any byte value is a valid checksum byte
            return self._end_block()
        return None

    def _grammar_error(self, byte: int) -> None:
        # The offending byte is not part of the refused candidate if it is a CR that may start
        # the next block.
        self._pending -= 1
        self._refuse()
        if byte == _CR:
            self._start()
        else:
            self.stats.garbage_bytes += 1

    def _end_label(self) -> None:
        label = self._label.decode("ascii")
        if not label:
            self._refuse()
            return
        if label == _CHECKSUM_LABEL:
            self._state = _State.CHECKSUM
            return
        if label in self._fields or len(self._fields) >= MAX_FIELDS:
            self._refuse()
            return
        self._state = _State.VALUE

    def _end_field(self) -> None:
        label = self._label.decode("ascii")
        self._fields[label] = self._value.decode("ascii")
        self._label.clear()
        self._value.clear()
        self._state = _State.LABEL

    def _end_block(self) -> Block | None:
        total, fields, size = self._sum, self._fields, self._pending
        self._to_idle()
        if total != 0:
            self.stats.checksum_errors += 1
            return None
        try:
            if not fields:
                raise ValueError("block without fields")
            block = Block.from_fields(fields)
        except ValueError:
            self.stats.grammar_errors += 1
            self.stats.garbage_bytes += size
            return None
        self.stats.blocks += 1
        return block


def checksum_byte(body: bytes) -> int:
    """The checksum byte that makes `body` + it sum to 0 mod 256 (`body` ends with the TAB
    after "Checksum")."""
    return (-sum(body)) & 0xFF


def encode_block(fields: Mapping[str, str] | list[tuple[str, str]]) -> bytes:
    """Build a wire block from label/value pairs, with the Checksum field appended."""
    items = list(fields.items()) if isinstance(fields, Mapping) else list(fields)
    body = b"".join(b"\r\n" + k.encode("ascii") + b"\t" + v.encode("ascii") for k, v in items)
    body += b"\r\nChecksum\t"
    return body + bytes([checksum_byte(body)])


# --- plain quantities ---------------------------------------------------------------------------

QuantityRole = Literal["measurement", "energy_counter", "state"]


@dataclass(frozen=True, slots=True)
class VeQuantity:
    """A plain-unit name for one VE.Direct field: value = raw * scale, in `unit`.

    `role` "energy_counter" marks a lifetime energy total; `resettable` says the user can clear
    it on the device (H19): a drop to about zero is then a reset, not negative energy.
    """

    name: str
    label: str
    unit: str
    scale: float
    role: QuantityRole = "measurement"
    resettable: bool = False
    description: str = ""


def _q(name: str, label: str, unit: str, scale: float, description: str, **kw: Any) -> VeQuantity:
    return VeQuantity(name, label, unit, scale, description=description, **kw)


#: Every plain name `VeDirectDevice.read()` knows, by name.
QUANTITIES: Final[dict[str, VeQuantity]] = {
    q.name: q
    for q in (
        _q("battery_voltage_v", "V", "V", 0.001, "battery voltage"),
        _q("battery_current_a", "I", "A", 0.001, "battery current (+ = charging)"),
        _q("pv_voltage_v", "VPV", "V", 0.001, "panel voltage"),
        _q("pv_power_w", "PPV", "W", 1.0, "panel power"),
        _q("load_current_a", "IL", "A", 0.001, "load output current"),
        _q(
            "yield_total_wh",
            "H19",
            "Wh",
            10.0,
            "lifetime yield (user-resettable, 10 Wh steps)",
            role="energy_counter",
            resettable=True,
        ),
        _q("yield_today_wh", "H20", "Wh", 10.0, "yield today (resets every day)"),
        _q("yield_yesterday_wh", "H22", "Wh", 10.0, "yield yesterday"),
        _q("max_power_today_w", "H21", "W", 1.0, "maximum power today"),
        _q("max_power_yesterday_w", "H23", "W", 1.0, "maximum power yesterday"),
        _q("day_sequence", "HSDS", "", 1.0, "day sequence number 0..364", role="state"),
        _q("charge_state", "CS", "", 1.0, "charger state code", role="state"),
        _q("tracker_mode", "MPPT", "", 1.0, "tracker operation mode", role="state"),
        _q("error_code", "ERR", "", 1.0, "charger error code", role="state"),
        _q("off_reason", "OR", "", 1.0, "off reason bit mask", role="state"),
        _q("load_on", "LOAD", "", 1.0, "load output on (1) or off (0)", role="state"),
        _q("state_of_charge_permille", "SOC", "permille", 1.0, "state of charge (BMV only)"),
    )
}
#: Read by `read()` without names, when the device sends them.
DEFAULT_NAMES: Final = (
    "battery_voltage_v",
    "battery_current_a",
    "pv_voltage_v",
    "pv_power_w",
    "load_current_a",
    "yield_total_wh",
    "yield_today_wh",
    "state_of_charge_permille",
)


def plain_values(
    values: Mapping[str, Value], names: list[str] | tuple[str, ...]
) -> dict[str, float]:
    """Plain-unit values for `names` from typed field values; absent or "---" fields are left
    out. Raises KeyError for a name not in QUANTITIES."""
    out: dict[str, float] = {}
    for name in names:
        q = QUANTITIES[name]
        raw = values.get(q.label)
        if raw is None or isinstance(raw, str):
            continue
        # Rounded so that 13280 mV reads 13.28 V, not 13.280000000000001.
        out[name] = round(float(raw) * q.scale, 9)
    return out


# --- serial reader ------------------------------------------------------------------------------


@dataclass
class _Shared:
    """State the reader thread hands to `read()`; guarded by `VeDirectDevice._lock`."""

    values: dict[str, Value] = field(default_factory=dict)
    value_at: dict[str, float] = field(default_factory=dict)
    last_block_at: float | None = None
    opened_at: float | None = None
    port_error: str | None = None
    checksum_errors_at_open: int = 0


class VeDirectDevice:
    """One VE.Direct port (e.g. /dev/ttyUSB0 on a Victron VE.Direct-USB cable).

    A daemon thread opens the port (19200 8N1, no flow control, DTR and RTS high to power the
    cable's isolated side), feeds a `VeDirectParser` and keeps the newest value of every field
    from valid blocks (BMVs spread their fields over two blocks). When the port fails or
    vanishes, the thread closes it and keeps trying to reopen the same path, so a replugged
    adapter is picked up without recreating this object.

    `read()` never blocks the event loop. It answers from data younger than `timeout_s`;
    otherwise it raises DeviceUnavailableError with a plain reason.
    """

    REOPEN_INTERVAL_S: Final = 0.5
    READ_TIMEOUT_S: Final = 0.1

    def __init__(
        self, port_path: str | os.PathLike[str], baudrate: int = 19200, timeout_s: float = 3.0
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.port_path = str(port_path)
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self.quantities: dict[str, VeQuantity] = dict(QUANTITIES)
        self.parser = VeDirectParser()
        self._lock = threading.Lock()
        self._shared = _Shared()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at: float | None = None

    @property
    def units(self) -> dict[str, str]:
        """name -> unit, as the agent's meter layer wants it."""
        return {name: q.unit for name, q in self.quantities.items()}

    @property
    def serial_number(self) -> str | None:
        """SER# of the device, once a block carrying it arrived."""
        with self._lock:
            ser = self._shared.values.get("SER#")
        return ser if isinstance(ser, str) else None

    @property
    def product_id(self) -> int | None:
        """PID of the device, once known."""
        with self._lock:
            pid = self._shared.values.get("PID")
        return pid if isinstance(pid, int) else None

    def latest_fields(self) -> dict[str, Value]:
        """Newest typed value of every field seen (for diagnostics)."""
        with self._lock:
            return dict(self._shared.values)

    def start(self) -> None:
        """Start the reader thread (read() does this on first use)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._started_at = time.monotonic()
        self._thread = threading.Thread(
            target=self._run, name=f"vedirect:{self.port_path}", daemon=True
        )
        self._thread.start()

    async def __aenter__(self) -> VeDirectDevice:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the reader thread and close the port (safe to call more than once)."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            await asyncio.to_thread(thread.join, 2.0)

    async def read(self, names: list[str] | None = None) -> dict[str, float]:
        """Values of `names` (default: DEFAULT_NAMES the device sends) in plain units.

        Raises ValueError for an unknown name, DeviceUnavailableError if the port is gone,
        no valid block arrived within `timeout_s`, or the device does not send an asked-for
        field.
        """
        if names is not None:
            unknown = [n for n in names if n not in self.quantities]
            if unknown:
                raise ValueError(f"unknown VE.Direct quantities: {', '.join(unknown)}")
        self.start()
        assert self._started_at is not None
        # Right after start the first block may still be on its way: wait for it.
        deadline = self._started_at + self.timeout_s
        while True:
            now = time.monotonic()
            with self._lock:
                shared = self._shared
                fresh = shared.last_block_at is not None and now - shared.last_block_at < (
                    self.timeout_s
                )
                port_error = shared.port_error
                if fresh:
                    values = {
                        label: value
                        for label, value in shared.values.items()
                        if now - shared.value_at[label] < self.timeout_s
                    }
                    break
            if port_error is not None or now >= deadline:
                raise DeviceUnavailableError(self._unavailable_reason(now))
            await asyncio.sleep(0.05)
        if names is None:
            return plain_values(values, DEFAULT_NAMES)
        result = plain_values(values, names)
        missing = [n for n in names if n not in result]
        if missing:
            labels = ", ".join(f"{n} ({self.quantities[n].label})" for n in missing)
            raise DeviceUnavailableError(
                f"VE.Direct device on {self.port_path} does not send {labels}"
            )
        return result

    def _unavailable_reason(self, now: float) -> str:
        with self._lock:
            shared = self._shared
            if shared.port_error is not None:
                return shared.port_error
            since = shared.last_block_at or shared.opened_at or self._started_at or now
            bad = self.parser.stats.checksum_errors - shared.checksum_errors_at_open
        silent_s = max(now - since, self.timeout_s)
        reason = f"no VE.Direct frame on {self.port_path} for {silent_s:.1f} s"
        if bad:
            reason += f" ({bad} blocks failed the checksum since the port was opened)"
        return reason

    # --- reader thread ------------------------------------------------------------------------

    def _run(self) -> None:
        port: Any = None
        try:
            while not self._stop.is_set():
                if port is None:
                    port = self._open()
                    if port is None:
                        self._stop.wait(self.REOPEN_INTERVAL_S)
                        continue
                try:
                    data = port.read(max(1, port.in_waiting))
                except Exception as exc:  # SerialException, OSError: adapter pulled
                    _log.info("VE.Direct port %s failed: %s", self.port_path, exc)
                    self._set_port_error(f"serial port {self.port_path} is gone")
                    with contextlib.suppress(Exception):
                        port.close()
                    port = None
                    continue
                if data:
                    try:
                        self._consume(data)
                    except Exception:  # a parser bug must not silently kill the reader
                        _log.exception(
                            "VE.Direct data from %s could not be handled", self.port_path
                        )
                        self.parser.reset()
        finally:
            if port is not None:
                with contextlib.suppress(Exception):
                    port.close()

    def _open(self) -> Any:
        import serial  # pyserial; imported here so the parser stays importable without it

        try:
            port = serial.Serial()
            port.port = self.port_path
            port.baudrate = self.baudrate
            port.bytesize = serial.EIGHTBITS
            port.parity = serial.PARITY_NONE
            port.stopbits = serial.STOPBITS_ONE
            port.xonxoff = False
            port.rtscts = False
            port.dsrdtr = False
            port.timeout = self.READ_TIMEOUT_S
            port.dtr = True  # the VE.Direct-USB interface is powered through DTR/RTS
            port.rts = True
            port.open()
            port.reset_input_buffer()  # bytes queued while nobody listened are stale
        except (FileNotFoundError, serial.SerialException, OSError) as exc:
            gone = isinstance(exc, FileNotFoundError) or "No such file" in str(exc)
            message = (
                f"serial port {self.port_path} is gone"
                if gone
                else f"cannot open serial port {self.port_path}: {exc}"
            )
            self._set_port_error(message)
            return None
        self.parser.reset()
        with self._lock:
            self._shared.port_error = None
            self._shared.opened_at = time.monotonic()
            self._shared.checksum_errors_at_open = self.parser.stats.checksum_errors
        return port

    def _set_port_error(self, message: str) -> None:
        with self._lock:
            self._shared.port_error = message

    def _consume(self, data: bytes) -> None:
        blocks = self.parser.feed(data)
        if not blocks:
            return
        now = time.monotonic()
        with self._lock:
            for block in blocks:
                for label, value in block.values.items():
                    self._shared.values[label] = value
                    self._shared.value_at[label] = now
            self._shared.last_block_at = now
