"""Typed edge agent settings, read from a TOML file (see firmware-configs/edge/example.toml).

Owns: the shape and validation of the agent's configuration. A wrong value gives a plain message
naming the field, never a traceback.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edge.accounting import Channel
from protocol.checkpoint import parse_verifier_key
from protocol.topics import check_segment


class ConfigError(ValueError):
    """A configuration file that cannot be used, with a plain-language reason."""


class MeterSettings(BaseModel):
    """One device the agent reads."""

    model_config = ConfigDict(extra="forbid")

    name: str
    driver: Literal["modbus", "sunspec", "vedirect"] = "modbus"
    register_map: str = Field("", description="register map name, e.g. eastron/sdm630 (modbus)")
    transport: Literal["tcp", "rtu"] = "tcp"
    host: str = "127.0.0.1"
    port: int = Field(502, ge=1, le=65535)
    serial_port: str = Field("", description="e.g. /dev/gridmint-rs485-A10K1234 (rtu, vedirect)")
    baudrate: int | None = Field(None, description="default: the register map's factory setting")
    parity: Literal["N", "E", "O"] | None = None
    stopbits: Literal[1, 2] | None = None
    unit_id: int = Field(1, ge=0, le=247)
    timeout_s: float = Field(1.0, gt=0)
    channels: dict[Channel, str] = Field(
        default_factory=dict,
        description="site channel -> quantity holding its lifetime energy total",
    )
    integrate: dict[Channel, str] = Field(
        default_factory=dict,
        description="site channel -> power quantity (W) to integrate when there is no counter",
    )
    soc: str = Field("", description="quantity holding the battery state of charge")
    serial: str = Field("", description="meter serial: a change on a channel is a meter swap")


def _check_meter(m: MeterSettings) -> MeterSettings:
    if m.driver == "modbus" and not m.register_map:
        raise ValueError(f"meter {m.name}: a modbus meter needs register_map")
    if (m.transport == "rtu" or m.driver == "vedirect") and not m.serial_port:
        raise ValueError(f"meter {m.name}: serial_port is required for {m.driver}/{m.transport}")
    return m


class GpioSettings(BaseModel):
    """The Pi's status LED, push button and load relays (BCM pin numbers)."""

    model_config = ConfigDict(extra="forbid")

    led_pin: int = Field(17, ge=0, le=27)
    button_pin: int = Field(27, ge=0, le=27)
    relays: dict[str, int] = Field(default_factory=dict, description="load name -> pin")
    relay_active_high: bool = True
    long_press_s: float = Field(3.0, gt=0)


class EdgeSettings(BaseSettings):
    """Everything one edge agent needs. Environment variables GRIDMINT_EDGE_* override the file."""

    model_config = SettingsConfigDict(env_prefix="GRIDMINT_EDGE_", extra="forbid")

    device_id: str
    site_id: str
    deployment: str = Field("gridmint-dev", description="deployment id, signed as external data")
    key_file: Path
    state_db: Path
    broker_url: str = "mqtt://127.0.0.1:1883"
    cloud_url: str = Field("", description="the aggregator's HTTP base URL (probe, proofs)")
    ledger_key: str = Field("", description="the ledger's checkpoint key (C2SP verifier key)")
    proof_check_interval_s: float = Field(
        300.0, gt=0, description="real seconds between ledger inclusion-proof checks"
    )
    tls_ca_file: Path | None = Field(None, description="CA bundle for an mqtts:// broker")
    tls_cert_file: Path | None = Field(None, description="client certificate (CN = device id)")
    tls_key_file: Path | None = Field(None, description="the client certificate's key (0600)")
    interval_s: Literal[300, 900] = 300
    capacity_w: int = Field(5000, gt=0)
    zone: str = Field("", max_length=64)
    tech: str = Field("pv", max_length=32)
    firmware: str = Field("gridmint-edge/0.1", max_length=128)
    resend_after_s: float = Field(30.0, gt=0)
    telemetry_interval_s: float = Field(10.0, gt=0, description="real seconds between polls")
    meters: list[MeterSettings]
    gpio: GpioSettings | None = Field(None, description="absent: no LED, button or relays")

    @field_validator("device_id", "site_id")
    @classmethod
    def _segment(cls, v: str) -> str:
        return check_segment(v, "id")

    @field_validator("meters")
    @classmethod
    def _meters(cls, v: list[MeterSettings]) -> list[MeterSettings]:
        names = [m.name for m in v]
        if len(set(names)) != len(names):
            raise ValueError("meter names must be unique")
        return [_check_meter(m) for m in v]

    @field_validator("ledger_key")
    @classmethod
    def _ledger_key(cls, v: str) -> str:
        if v:
            try:
                parse_verifier_key(v)
            except ValueError as exc:
                raise ValueError(f"ledger_key is not a verifier key: {exc}") from None
        return v

    @model_validator(mode="after")
    def _tls(self) -> EdgeSettings:
        if self.broker_url.startswith("mqtts:") and self.tls_ca_file is None:
            raise ValueError("an mqtts:// broker needs tls_ca_file")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self


def load_settings(path: Path) -> EdgeSettings:
    """Read and validate an edge TOML file; relative paths are taken from the file's folder."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for key in ("key_file", "state_db", "tls_ca_file", "tls_cert_file", "tls_key_file"):
        if key in raw and not Path(raw[key]).is_absolute():
            raw[key] = str(path.parent / raw[key])
    try:
        return EdgeSettings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"config file {path}: {problems}") from None
