"""The scan's defaults, apart from provisioning/scan.py so the command line can show them in its
help without importing the Modbus stack (a `gridmint[cloud]` machine has no pymodbus)."""

from __future__ import annotations

from typing import Final

DEFAULT_BAUDS: Final = (9600, 19200, 2400, 115200)
DEFAULT_UNITS: Final = tuple(range(1, 11))
#: Unit ids probed for SunSpec only (common SunSpec defaults).
DEFAULT_SUNSPEC_UNITS: Final = (126, 247)
#: Unit ids probed on LAN hosts (a subset of what evcc's detect probes).
DEFAULT_TCP_UNITS: Final = (1, 2, 3, 71, 126, 200, 240)
DEFAULT_TCP_PORT: Final = 502
DEFAULT_SERIAL_GLOBS: Final = (
    "/dev/gridmint-*",
    "/dev/ttyUSB*",
    "/dev/ttyACM*",
    "/dev/ttyXRUSB*",
    "/dev/serial0",
)
