"""Concrete actuators: the equipment behind the `Actuator` protocol of edge/controls.py.

Owns: `SunSpecInverterControl` (generation limit and connect/disconnect through SunSpec model
123), `SunSpecStorageControl` (battery setpoint through model 124), `GpioRelayControl` (a load on
one of the Pi's relays), and `make_actuators`, which builds them from the agent's settings.

SunSpec actuators drive the very `SunSpecDevice` a meter reader polls, so writes and reads go
through the same driver lock and the same bus (edge/transports/modbus_bus.py): one request at a
time on the wire. Values arrive in the command's units (edge/controls.py) and are turned into
the device's here; the driver converts engineering units to raw counts with the scale factor
the device announces (edge/drivers/sunspec.py, `write_points`).

Not here: a charge controller's load switch. EPEver and Renogy controllers have one, but the
register maps (firmware-configs/registers) describe no writable coil or register yet, and no
address for it has been checked against the reference; see docs/devices.md, "Controls".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from edge.controls import Actuator, ActuatorError
from edge.drivers.modbus_generic import DeviceUnavailableError
from edge.drivers.sunspec import SunSpecDevice
from edge.meters import MeterReader
from edge.settings import EdgeSettings
from protocol.dispatch import FULL_SCALE, ControlMode

if TYPE_CHECKING:
    from edge.gpio import StatusPanel

log = logging.getLogger(__name__)

#: SunSpec models the controls live in.
CONTROLS_MODEL: Final = 123
STORAGE_MODEL: Final = 124
#: Model 123 enums (json/model_123.json): WMaxLim_Ena DISABLED/ENABLED, Conn DISCONNECT/CONNECT.
DISABLED, ENABLED = 0, 1
#: Model 124 StorCtl_Mod bits (json/model_124.json): bit 0 CHARGE, bit 1 DISCHARGE.
STOR_HOLD_OFF: Final = 0  # neither bit: the battery follows its own schedule again
STOR_CHARGE: Final = 1
STOR_DISCHARGE: Final = 2

_BY_WIRE_NAME: Final = {c.wire_name: c for c in ControlMode}
INVERTER_CONTROLS: Final = frozenset({ControlMode.OP_MOD_MAX_LIM_W, ControlMode.OP_MOD_CONNECT})
STORAGE_CONTROLS: Final = frozenset({ControlMode.OP_MOD_FIXED_W})


def _percent(value: int) -> float:
    """Hundredths of a percent (2030.5 PerCent) -> percent, as SunSpec's % points take it."""
    return value * 100.0 / FULL_SCALE


def _check_value(name: str, control: ControlMode, value: int) -> None:
    low, high = control.value_range
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ActuatorError(f"{name}: {control.wire_name} value {value!r} is outside {low}..{high}")


class _SunSpecControl:
    """Shared parts: the device, which controls are configured, errors in plain words."""

    model_id: int
    offers: frozenset[ControlMode]

    def __init__(self, name: str, device: SunSpecDevice, controls: frozenset[ControlMode]):
        unsupported = controls - self.offers
        if unsupported:
            names = ", ".join(sorted(c.wire_name for c in unsupported))
            raise ValueError(f"{name}: {type(self).__name__} cannot do {names}")
        self.name = name
        self.device = device
        self.controls = frozenset(controls)

    def _require(self, control: ControlMode) -> None:
        if control not in self.controls:
            raise ActuatorError(f"{self.name} does not take {control.wire_name}")

    async def discover(self) -> frozenset[ControlMode]:
        """Find the device's models now; without model `model_id` it offers no control
        (`controls` becomes empty). Raises ActuatorError when the device cannot be reached."""
        try:
            layout = self.device.layout or await self.device.discover()
        except DeviceUnavailableError as exc:
            raise ActuatorError(f"{self.name}: {exc.reason}") from exc
        if layout.first([self.model_id]) is None:
            log.warning(
                "%s: %s has no SunSpec model %d; its controls are not offered",
                self.name,
                layout.describe(),
                self.model_id,
            )
            self.controls = frozenset()
        return self.controls

    async def _write(self, values: Mapping[str, float]) -> None:
        try:
            await self.device.write_points(self.model_id, values)
        except (DeviceUnavailableError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, DeviceUnavailableError) else str(exc)
            raise ActuatorError(f"{self.name}: {reason}") from exc

    async def _ac_power_w(self) -> int | None:
        try:
            values = await self.device.read(["ac_power_w"])
        except DeviceUnavailableError as exc:
            raise ActuatorError(f"{self.name}: {exc.reason}") from exc
        power = values.get("ac_power_w")
        return None if power is None else round(power)


class SunSpecInverterControl(_SunSpecControl):
    """A PV inverter's immediate controls (SunSpec model 123).

    opModMaxLimW: WMaxLimPct = value / 100 % of the inverter's rating (WMax), then
    WMaxLim_Ena = ENABLED; release writes WMaxLim_Ena = DISABLED (full output again).
    opModConnect: Conn = value (1 CONNECT, 0 DISCONNECT); release reconnects.
    measure_w: the inverter's AC output (model 10x W), + into the home.
    """

    model_id = CONTROLS_MODEL
    offers = INVERTER_CONTROLS

    async def apply(self, control: ControlMode, value: int) -> None:
        """Set the limit or the connection; raise ActuatorError if the inverter refuses."""
        self._require(control)
        _check_value(self.name, control, value)
        if control is ControlMode.OP_MOD_MAX_LIM_W:
            # The limit first, then the enable: enabling first would apply the old limit.
            await self._write({"WMaxLimPct": _percent(value), "WMaxLim_Ena": ENABLED})
        else:
            await self._write({"Conn": value})

    async def release(self, control: ControlMode) -> None:
        """Limit off, or connected again."""
        self._require(control)
        if control is ControlMode.OP_MOD_MAX_LIM_W:
            await self._write({"WMaxLim_Ena": DISABLED})
        else:
            await self._write({"Conn": ENABLED})

    async def measure_w(self, control: ControlMode) -> int | None:
        """The inverter's AC power (W)."""
        self._require(control)
        return await self._ac_power_w()


class SunSpecStorageControl(_SunSpecControl):
    """A battery inverter's storage controls (SunSpec model 124).

    opModFixedW > 0: OutWRte = value / 100 % of the maximum discharge rate, StorCtl_Mod =
    DISCHARGE; < 0: InWRte = -value / 100 % of WChaMax, StorCtl_Mod = CHARGE; 0: both rates
    0 % with both bits set, which holds the battery at 0 W. Release: StorCtl_Mod = 0, the
    battery follows its own schedule. measure_w: the battery inverter's AC power (model 10x
    W), + discharging into the home.
    """

    model_id = STORAGE_MODEL
    offers = STORAGE_CONTROLS

    async def apply(self, control: ControlMode, value: int) -> None:
        """Set the battery setpoint; raise ActuatorError if the inverter refuses."""
        self._require(control)
        _check_value(self.name, control, value)
        # Rates before the mode bits, so the mode never starts with a stale rate.
        if value > 0:
            await self._write({"OutWRte": _percent(value), "StorCtl_Mod": STOR_DISCHARGE})
        elif value < 0:
            await self._write({"InWRte": _percent(-value), "StorCtl_Mod": STOR_CHARGE})
        else:
            await self._write(
                {"OutWRte": 0.0, "InWRte": 0.0, "StorCtl_Mod": STOR_CHARGE | STOR_DISCHARGE}
            )

    async def release(self, control: ControlMode) -> None:
        """Hand the battery back to its own control (StorCtl_Mod = 0)."""
        self._require(control)
        await self._write({"StorCtl_Mod": STOR_HOLD_OFF})

    async def measure_w(self, control: ControlMode) -> int | None:
        """The battery inverter's AC power (W, + discharging)."""
        self._require(control)
        return await self._ac_power_w()


class GpioRelayControl:
    """A load on one of the Pi's relays (edge/gpio.py): opModConnect 1 switches it on, 0 off;
    release switches it off, the state the agent starts it in. It cannot measure power."""

    def __init__(self, name: str, panel: StatusPanel, relay: str):
        if relay not in panel.relay_states():
            known = ", ".join(sorted(panel.relay_states())) or "none"
            raise ValueError(f"no relay named {relay!r} (known relays: {known})")
        self.name = name
        self.panel = panel
        self.relay = relay
        self.controls = frozenset({ControlMode.OP_MOD_CONNECT})

    def _switch(self, on: bool) -> None:
        try:
            self.panel.set_relay(self.relay, on)
        except Exception as exc:  # gpiozero raises its own errors for a closed or busy pin
            raise ActuatorError(f"{self.name}: relay {self.relay!r} did not switch: {exc}") from exc

    async def apply(self, control: ControlMode, value: int) -> None:
        """Switch the relay on (1) or off (0)."""
        if control is not ControlMode.OP_MOD_CONNECT:
            raise ActuatorError(f"{self.name} does not take {control.wire_name}")
        _check_value(self.name, control, value)
        self._switch(value == 1)

    async def release(self, control: ControlMode) -> None:
        """Switch the relay off."""
        if control is not ControlMode.OP_MOD_CONNECT:
            raise ActuatorError(f"{self.name} does not take {control.wire_name}")
        self._switch(False)

    async def measure_w(self, control: ControlMode) -> int | None:
        """A relay has no meter: always None."""
        return None


def make_actuators(
    settings: EdgeSettings,
    readers: Sequence[MeterReader],
    panel: StatusPanel | None = None,
) -> list[Actuator]:
    """The actuators the settings ask for, built on the readers' own drivers.

    A meter's `controls` (2030.5 names) become a `SunSpecInverterControl` named after the meter
    (opModMaxLimW, opModConnect) and/or a `SunSpecStorageControl` (opModFixedW; named
    "<meter> storage" when the meter has inverter controls too). `gpio.dispatch_relays` become
    `GpioRelayControl`s named "relay <name>" on `panel`. Raises ValueError with a plain message
    when a configured control has no driver to act through. Whether a SunSpec device really has
    model 123/124 is known after discovery: call `prepare_actuators` before offering them.
    """
    by_name = {reader.name: reader for reader in readers}
    actuators: list[Actuator] = []
    for meter in settings.meters:
        if not meter.controls:
            continue
        reader = by_name.get(meter.name)
        if reader is None:
            raise ValueError(f"meter {meter.name}: has controls but no reader was built for it")
        # The SunSpec reader wraps its device with the bus it owns (edge/meters.py).
        device = getattr(reader.driver, "device", reader.driver)
        if not isinstance(device, SunSpecDevice):
            raise ValueError(f"meter {meter.name}: controls need a SunSpec device")
        wanted = frozenset(_BY_WIRE_NAME[n] for n in meter.controls)
        inverter = wanted & INVERTER_CONTROLS
        storage = wanted & STORAGE_CONTROLS
        if inverter:
            actuators.append(SunSpecInverterControl(meter.name, device, inverter))
        if storage:
            name = f"{meter.name} storage" if inverter else meter.name
            actuators.append(SunSpecStorageControl(name, device, storage))
    relays = settings.gpio.dispatch_relays if settings.gpio is not None else []
    if relays and panel is None:
        raise ValueError("gpio.dispatch_relays needs the status panel (a [gpio] section)")
    for relay in relays:
        assert panel is not None
        actuators.append(GpioRelayControl(f"relay {relay}", panel, relay))
    return actuators


async def prepare_actuators(actuators: Sequence[Actuator]) -> list[Actuator]:
    """Discover the SunSpec devices behind `actuators` and keep those that offer a control.

    A device that cannot be reached now keeps its configured controls (a later command fails
    with a plain ActuatorError if it is still away); one that lacks the model is dropped, with
    a warning in the log.
    """
    kept: list[Actuator] = []
    for actuator in actuators:
        if isinstance(actuator, _SunSpecControl):
            try:
                await actuator.discover()
            except ActuatorError as exc:
                log.warning("%s (controls kept as configured)", exc)
        if actuator.controls:
            kept.append(actuator)
    return kept
