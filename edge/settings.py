"""Typed edge agent settings, read from a TOML file (see firmware-configs/edge/example.toml).

Owns: the shape and validation of the agent's configuration. A wrong value gives a plain message
naming the field, never a traceback; every problem of a file is reported at once.

Plain dataclasses checked by hand, not pydantic: the agent is the one long-running process on a
Pi, and pydantic with pydantic-settings was about 12 MiB of its resident memory (benchmarks/
RESULTS.md, "Edge agent footprint"; typer is kept below 0.29, which imports pydantic for every
command, for the same reason). The checks follow pydantic's lax mode where it matters: numbers
may come as numeric strings (environment variables), paths and channel names as strings, nested
tables as dicts; unknown keys are refused.

Environment variables `GRIDMINT_EDGE_<FIELD>` (any case) fill fields the file leaves out, as
pydantic-settings did (the file wins); `meters` and `gpio` take JSON there.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from edge.accounting import Channel
from protocol.checkpoint import parse_verifier_key
from protocol.dispatch import ControlMode
from protocol.topics import check_segment

ENV_PREFIX = "GRIDMINT_EDGE_"
_N = TypeVar("_N", int, float)


class ConfigError(ValueError):
    """A configuration file that cannot be used, with a plain-language reason."""


class SettingsError(ConfigError):
    """Invalid settings: every problem as (location, message), e.g. ("meters.0.port", "...")."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{loc}: {msg}" if loc else msg for loc, msg in problems))


def _choices(values: Iterable[object]) -> str:
    shown = [repr(v) for v in values]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


class _Check:
    """Coerces field values in place and collects what is wrong with them."""

    def __init__(self, values: dict[str, Any], loc: str = ""):
        self.values = values
        self.loc = loc
        self.problems: list[tuple[str, str]] = []

    def fail(self, name: str, message: str) -> None:
        self.problems.append((f"{self.loc}{name}", message))

    def _set(self, name: str, convert: Any) -> None:
        """Replace values[name] with convert(value); a ValueError from it is a problem."""
        if name not in self.values:
            return
        try:
            self.values[name] = convert(self.values[name])
        except ValueError as exc:
            self.fail(name, str(exc))

    def text(self, name: str, max_length: int | None = None) -> None:
        def conv(v: Any) -> str:
            if not isinstance(v, str):
                raise ValueError("Input should be a valid string")
            if max_length is not None and len(v) > max_length:
                raise ValueError(f"String should have at most {max_length} characters")
            return v

        self._set(name, conv)

    def integer(self, name: str, *, ge: int | None = None, le: int | None = None,
                gt: int | None = None, optional: bool = False) -> None:
        def conv(v: Any) -> int | None:
            if v is None and optional:
                return None
            return _bounded(_to_int(v), ge=ge, le=le, gt=gt)

        self._set(name, conv)

    def number(self, name: str, *, gt: float | None = None) -> None:
        def conv(v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, int | float | str):
                raise ValueError("Input should be a valid number")
            try:
                f = float(v)
            except ValueError:
                raise ValueError("Input should be a valid number") from None
            if not math.isfinite(f):
                raise ValueError("Input should be a finite number")
            return _bounded(f, gt=gt)

        self._set(name, conv)

    def boolean(self, name: str) -> None:
        def conv(v: Any) -> bool:
            if isinstance(v, bool):
                return v
            text = str(v).strip().lower() if isinstance(v, str | int) else ""
            if text in ("1", "true", "yes", "on", "t", "y"):
                return True
            if text in ("0", "false", "no", "off", "f", "n"):
                return False
            raise ValueError("Input should be a valid boolean")

        self._set(name, conv)

    def path(self, name: str, optional: bool = False) -> None:
        def conv(v: Any) -> Path | None:
            if v is None and optional:
                return None
            if isinstance(v, str | os.PathLike):
                return Path(v)
            raise ValueError("Input should be a valid path")

        self._set(name, conv)

    def choice(self, name: str, allowed: tuple[Any, ...], optional: bool = False) -> None:
        def conv(v: Any) -> Any:
            if v is None and optional:
                return None
            if isinstance(allowed[0], int) and isinstance(v, str | float):
                with contextlib.suppress(ValueError):
                    v = _to_int(v)
            if isinstance(v, bool) or v not in allowed:
                raise ValueError(f"Input should be {_choices(allowed)}")
            return v

        self._set(name, conv)

    def mapping(self, name: str, key: type[Channel] | type[str], value: type[str] | type[int],
                *, ge: int | None = None, le: int | None = None) -> None:
        if name not in self.values:
            return
        raw = self.values[name]
        if not isinstance(raw, Mapping):
            self.fail(name, "Input should be a valid dictionary")
            return
        out: dict[Any, Any] = {}
        for k, v in raw.items():
            if key is Channel:
                try:
                    k = Channel(k)
                except ValueError:
                    channels = _choices(c.value for c in Channel)
                    self.fail(f"{name}.{k}", f"Input should be {channels}")
                    continue
            elif not isinstance(k, str):
                self.fail(f"{name}.{k}", "Input should be a valid string")
                continue
            if value is str:
                if not isinstance(v, str):
                    self.fail(f"{name}.{k}", "Input should be a valid string")
                    continue
            else:
                try:
                    v = _bounded(_to_int(v), ge=ge, le=le)
                except ValueError as exc:
                    self.fail(f"{name}.{k}", str(exc))
                    continue
            out[k] = v
        self.values[name] = out

    def run(self, name: str, validator: Any) -> None:
        """A field validator: a ValueError's message becomes the problem, its value the field."""
        self._set(name, validator)


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("Input should be a valid integer")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    raise ValueError("Input should be a valid integer")


def _bounded(
    v: _N, *, ge: _N | None = None, le: _N | None = None, gt: _N | None = None
) -> _N:
    if ge is not None and v < ge:
        raise ValueError(f"Input should be greater than or equal to {ge}")
    if le is not None and v > le:
        raise ValueError(f"Input should be less than or equal to {le}")
    if gt is not None and v <= gt:
        raise ValueError(f"Input should be greater than {gt}")
    return v


class _Settings:
    """Shared construction: check every field in __post_init__, or build from a TOML table."""

    @classmethod
    def _check(cls, chk: _Check) -> None:
        """Coerce and check each field present in chk.values."""
        raise NotImplementedError

    def _check_whole(self) -> list[tuple[str, str]]:
        """Rules across fields, run once every field is valid: (location, message)."""
        return []

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        chk = _Check(values)
        self._check(chk)
        if chk.problems:
            raise SettingsError(chk.problems)
        for name, value in values.items():
            setattr(self, name, value)
        problems = self._check_whole()
        if problems:
            raise SettingsError(problems)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], loc: str = "") -> Self:
        """Build from a TOML table (or JSON object); problems are located under `loc`."""
        if isinstance(raw, cls):
            return raw
        if not isinstance(raw, Mapping):
            raise SettingsError([(loc.rstrip("."), "Input should be a valid dictionary")])
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        extra = "Extra inputs are not permitted"
        problems = [(f"{loc}{key}", extra) for key in raw if key not in known]
        for name, f in known.items():
            if name not in raw and f.default is MISSING and f.default_factory is MISSING:
                problems.append((f"{loc}{name}", "Field required"))
        if problems:  # check the fields that are there too, to report everything at once
            chk = _Check({k: v for k, v in raw.items() if k in known}, loc)
            cls._check(chk)
            raise SettingsError(problems + chk.problems)
        try:
            return cls(**dict(raw))
        except SettingsError as exc:
            raise SettingsError([(f"{loc}{where}", msg) for where, msg in exc.problems]) from None


@dataclass(kw_only=True)
class MeterSettings(_Settings):
    """One device the agent reads."""

    name: str
    driver: Literal["modbus", "sunspec", "vedirect"] = "modbus"
    register_map: str = ""  # register map name, e.g. eastron/sdm630 (modbus)
    transport: Literal["tcp", "rtu"] = "tcp"
    host: str = "127.0.0.1"
    port: int = 502
    serial_port: str = ""  # e.g. /dev/gridmint-rs485-A10K1234 (rtu, vedirect)
    baudrate: int | None = None  # default: the register map's factory setting
    parity: Literal["N", "E", "O"] | None = None
    stopbits: Literal[1, 2] | None = None
    unit_id: int = 1
    timeout_s: float = 1.0
    #: site channel -> quantity holding its lifetime energy total
    channels: dict[Channel, str] = field(default_factory=dict)
    #: site channel -> power quantity (W) to integrate when there is no counter
    integrate: dict[Channel, str] = field(default_factory=dict)
    soc: str = ""  # quantity holding the battery state of charge
    serial: str = ""  # meter serial: a change on a channel is a meter swap
    #: dispatch controls this device takes, by 2030.5 name (edge/actuators.py): "opModMaxLimW"
    #: (SunSpec model 123), "opModFixedW" (model 124), "opModConnect" (model 123 Conn)
    controls: list[str] = field(default_factory=list)
    #: live telemetry flow ("pv", "battery", "grid") -> power quantity (W); "-name" negates
    flows: dict[str, str] = field(default_factory=dict)

    @classmethod
    def _check(cls, chk: _Check) -> None:
        chk.run("controls", _control_names)
        for name in ("name", "register_map", "host", "serial_port", "soc", "serial"):
            chk.text(name)
        chk.choice("driver", ("modbus", "sunspec", "vedirect"))
        chk.choice("transport", ("tcp", "rtu"))
        chk.integer("port", ge=1, le=65535)
        chk.integer("baudrate", optional=True)
        chk.choice("parity", ("N", "E", "O"), optional=True)
        chk.choice("stopbits", (1, 2), optional=True)
        chk.integer("unit_id", ge=0, le=247)
        chk.number("timeout_s", gt=0)
        chk.mapping("channels", Channel, str)
        chk.mapping("integrate", Channel, str)
        chk.run("flows", _flows)

    def _check_whole(self) -> list[tuple[str, str]]:
        if self.controls and self.driver != "sunspec":
            # The charge controllers' load switches are not in the register maps (yet): only
            # SunSpec devices describe their controls.
            return [("controls", f"controls need driver 'sunspec', not {self.driver!r}")]
        return []


#: Dispatch controls a device can be configured for (edge/actuators.py implements them).
METER_CONTROLS = (
    ControlMode.OP_MOD_MAX_LIM_W.wire_name,
    ControlMode.OP_MOD_FIXED_W.wire_name,
    ControlMode.OP_MOD_CONNECT.wire_name,
)


def _names(v: Any, allowed: tuple[str, ...] | None = None) -> list[str]:
    """A list of distinct strings (from `allowed` when given); a JSON/TOML list or one string
    with comma-separated names (environment variables)."""
    if isinstance(v, str):
        v = [part.strip() for part in v.split(",") if part.strip()]
    if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
        raise ValueError("Input should be a valid list of strings")
    if allowed is not None:
        for x in v:
            if x not in allowed:
                raise ValueError(f"{x!r} is not a control; use {_choices(allowed)}")
    if len(set(v)) != len(v):
        raise ValueError("names must not repeat")
    return list(v)


def _control_names(v: Any) -> list[str]:
    return _names(v, METER_CONTROLS)


FLOWS = ("pv", "battery", "grid")  # protocol/telemetry.py's pv_w, battery_w, grid_w


def _flows(v: Any) -> dict[str, str]:
    if not isinstance(v, Mapping):
        raise ValueError("Input should be a valid dictionary")
    for k, q in v.items():
        if k not in FLOWS:
            raise ValueError(f"flow {k!r} should be {_choices(FLOWS)}")
        if not isinstance(q, str) or not q.removeprefix("-"):
            raise ValueError(f'flow {k!r} should name a power quantity, e.g. "-total_power"')
    return dict(v)


def _check_meter(m: MeterSettings) -> None:
    if m.driver == "modbus" and not m.register_map:
        raise ValueError(f"meter {m.name}: a modbus meter needs register_map")
    if (m.transport == "rtu" or m.driver == "vedirect") and not m.serial_port:
        raise ValueError(f"meter {m.name}: serial_port is required for {m.driver}/{m.transport}")


@dataclass(kw_only=True)
class GpioSettings(_Settings):
    """The Pi's status LED, push button and load relays (BCM pin numbers)."""

    led_pin: int = 17
    button_pin: int = 27
    relays: dict[str, int] = field(default_factory=dict)  # load name -> pin
    relay_active_high: bool = True
    long_press_s: float = 3.0
    #: relays dispatch may switch (opModConnect, edge/actuators.py); the others stay local
    dispatch_relays: list[str] = field(default_factory=list)

    @classmethod
    def _check(cls, chk: _Check) -> None:
        chk.integer("led_pin", ge=0, le=27)
        chk.integer("button_pin", ge=0, le=27)
        chk.mapping("relays", str, int, ge=0, le=27)
        chk.boolean("relay_active_high")
        chk.number("long_press_s", gt=0)
        chk.run("dispatch_relays", _names)

    def _check_whole(self) -> list[tuple[str, str]]:
        unknown = [name for name in self.dispatch_relays if name not in self.relays]
        if unknown:
            return [("dispatch_relays", f"no relay named {', '.join(map(repr, unknown))}")]
        return []


def _ledger_key(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("Input should be a valid string")
    if v:
        try:
            parse_verifier_key(v)
        except ValueError as exc:
            raise ValueError(f"ledger_key is not a verifier key: {exc}") from None
    return v


def _dispatch_key(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("Input should be a valid string")
    if v and (len(v) != 64 or any(c not in "0123456789abcdefABCDEF" for c in v)):
        raise ValueError("dispatch_key should be 64 hex digits (the raw Ed25519 public key)")
    return v.lower()


def _segment(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("Input should be a valid string")
    return check_segment(v, "id")


@dataclass(kw_only=True)
class EdgeSettings(_Settings):
    """Everything one edge agent needs (`load_settings` reads it from the TOML file)."""

    device_id: str
    site_id: str
    deployment: str = "gridmint-dev"  # deployment id, signed as external data
    key_file: Path
    state_db: Path
    # One broker, or a comma-separated failover list (the nodes of a cluster), tried in order.
    broker_url: str = "mqtt://127.0.0.1:1883"
    cloud_url: str = ""  # the aggregator's HTTP base URL (probe, proofs)
    ledger_key: str = ""  # the ledger's checkpoint key (C2SP verifier key)
    proof_check_interval_s: float = 300.0  # real seconds between ledger inclusion-proof checks
    dispatch_key: str = ""  # the aggregator's dispatch key (64 hex); empty: no commands
    dispatch_silence_revert_s: float = 900.0  # link down this long: release every control
    tls_ca_file: Path | None = None  # CA bundle for an mqtts:// broker
    tls_cert_file: Path | None = None  # client certificate (CN = device id)
    tls_key_file: Path | None = None  # the client certificate's key (0600)
    interval_s: Literal[300, 900] = 300
    capacity_w: int = 5000
    zone: str = ""
    tech: str = "pv"
    firmware: str = "gridmint-edge/0.1"
    resend_after_s: float = 30.0
    # Tokens published before waiting for their PUBACKs; a drained window is one fsync.
    publish_window: int = 20
    telemetry_interval_s: float = 10.0  # real seconds between polls
    meters: list[MeterSettings]
    gpio: GpioSettings | None = None  # absent: no LED, button or relays

    @classmethod
    def _check(cls, chk: _Check) -> None:
        chk.run("device_id", _segment)
        chk.run("site_id", _segment)
        for name in ("deployment", "broker_url", "cloud_url"):
            chk.text(name)
        chk.run("ledger_key", _ledger_key)
        chk.number("proof_check_interval_s", gt=0)
        chk.run("dispatch_key", _dispatch_key)
        chk.number("dispatch_silence_revert_s", gt=0)
        chk.path("key_file")
        chk.path("state_db")
        for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            chk.path(name, optional=True)
        chk.choice("interval_s", (300, 900))
        chk.integer("capacity_w", gt=0)
        chk.text("zone", max_length=64)
        chk.text("tech", max_length=32)
        chk.text("firmware", max_length=128)
        chk.number("resend_after_s", gt=0)
        chk.integer("publish_window", ge=1, le=1000)
        chk.number("telemetry_interval_s", gt=0)
        if "meters" in chk.values:
            raw = chk.values["meters"]
            if not isinstance(raw, list | tuple):
                chk.fail("meters", "Input should be a valid list")
            else:
                meters = []
                for i, m in enumerate(raw):
                    try:
                        meters.append(MeterSettings.from_mapping(m, f"{chk.loc}meters.{i}."))
                    except SettingsError as exc:
                        chk.problems.extend(exc.problems)
                chk.values["meters"] = meters
        if chk.values.get("gpio") is not None:
            try:
                gpio = GpioSettings.from_mapping(chk.values["gpio"], f"{chk.loc}gpio.")
                chk.values["gpio"] = gpio
            except SettingsError as exc:
                chk.problems.extend(exc.problems)

    def _check_whole(self) -> list[tuple[str, str]]:
        problems = []
        names = [m.name for m in self.meters]
        if len(set(names)) != len(names):
            problems.append(("meters", "meter names must be unique"))
        for m in self.meters:
            try:
                _check_meter(m)
            except ValueError as exc:
                problems.append(("meters", str(exc)))
        if self.broker_url.startswith("mqtts:") and self.tls_ca_file is None:
            problems.append(("tls_ca_file", "an mqtts:// broker needs tls_ca_file"))
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            problems.append(("tls_cert_file", "tls_cert_file and tls_key_file go together"))
        return problems


def _from_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """`raw` plus GRIDMINT_EDGE_<FIELD> variables for the fields it does not set."""
    env = {k.upper(): v for k, v in environ.items() if k.upper().startswith(ENV_PREFIX)}
    out = dict(raw)
    for f in fields(EdgeSettings):
        value = env.get(ENV_PREFIX + f.name.upper())
        if f.name in raw or value is None:
            continue
        if f.name in ("meters", "gpio"):
            try:
                out[f.name] = json.loads(value)
            except ValueError:
                raise ConfigError(f"{ENV_PREFIX}{f.name.upper()} is not valid JSON") from None
        else:
            out[f.name] = value
    return out


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> EdgeSettings:
    """Read and validate an edge TOML file; relative paths are taken from the file's folder."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for key in ("key_file", "state_db", "tls_ca_file", "tls_cert_file", "tls_key_file"):
        if isinstance(raw.get(key), str) and not Path(raw[key]).is_absolute():
            raw[key] = str(path.parent / raw[key])
    try:
        raw = _from_environment(raw, os.environ if environ is None else environ)
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    try:
        return EdgeSettings.from_mapping(raw)
    except SettingsError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
