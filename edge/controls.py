"""What the agent can change on site: the interface between dispatch commands and equipment.

Owns: the `Actuator` protocol and its error. A dispatch command (protocol/dispatch.py) names one
control (`ControlMode`) and one integer value in that control's units; the command runner
(edge/dispatch_runner.py) finds the actuator that offers the control and drives it. Concrete
actuators (SunSpec inverter and storage controls, a charge controller's load switch, a GPIO
relay) live in edge/actuators.py; this module imports none of them, so the runner's logic is
testable without hardware.
"""

from __future__ import annotations

from typing import Protocol

from protocol.dispatch import ControlMode


class ActuatorError(RuntimeError):
    """The equipment did not take the setting (write refused, bus down, relay stuck). The
    message is plain and names the device: it goes into a FAILED (251) acknowledgement."""


class Actuator(Protocol):
    """One controllable piece of equipment.

    Values are in the command's units (see `ControlMode`): `OP_MOD_MAX_LIM_W` hundredths of a
    percent of the inverter's rating, `OP_MOD_FIXED_W` hundredths of a percent of the battery's
    maximum rate (+ discharge, - charge), the W controls in W, `OP_MOD_CONNECT` 1 or 0.
    """

    name: str
    controls: frozenset[ControlMode]

    async def apply(self, control: ControlMode, value: int) -> None:
        """Set `control` to `value` now; raise ActuatorError if the equipment refuses."""
        ...

    async def release(self, control: ControlMode) -> None:
        """Return `control` to the equipment's own default (limit off, battery on its own
        schedule, relay to its normal state); raise ActuatorError on failure."""
        ...

    async def measure_w(self, control: ControlMode) -> int | None:
        """The measured power of what `control` steers (W, sign as protocol/telemetry.py:
        + into the home's bus), or None if this equipment cannot measure it."""
        ...
