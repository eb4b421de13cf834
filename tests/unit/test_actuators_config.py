"""Controls configuration (MeterSettings.controls, GpioSettings.dispatch_relays) and the GPIO
relay actuator on gpiozero's mock pins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from edge.actuators import GpioRelayControl, make_actuators
from edge.controls import ActuatorError
from edge.gpio import StatusPanel
from edge.settings import ConfigError, EdgeSettings, load_settings
from protocol.dispatch import ControlMode

BASE = 'device_id = "pi-1"\nsite_id = "site-1"\nkey_file = "k"\nstate_db = "s"\n'
SUNSPEC = '[[meters]]\nname = "inv"\ndriver = "sunspec"\n'
RELAYS = {"boiler": 5, "ev": 6}


def _load(tmp_path: Path, text: str) -> EdgeSettings:
    cfg = tmp_path / "edge.toml"
    cfg.write_text(text)
    return load_settings(cfg, {})


def _problem(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as exc_info:
        _load(tmp_path, text)
    return str(exc_info.value)


def test_controls_take_2030_5_names(tmp_path: Path) -> None:
    s = _load(tmp_path, BASE + SUNSPEC + 'controls = ["opModMaxLimW", "opModFixedW"]\n')
    assert s.meters[0].controls == ["opModMaxLimW", "opModFixedW"]
    assert _load(tmp_path, BASE + SUNSPEC).meters[0].controls == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('controls = ["opModMaxLim"]', "meters.0.controls: 'opModMaxLim' is not a control"),
        ('controls = ["opModTargetW"]', "meters.0.controls: 'opModTargetW' is not a control"),
        ('controls = "opModConnect, opModConnect"', "meters.0.controls: names must not repeat"),
        ("controls = [1]", "meters.0.controls: Input should be a valid list of strings"),
    ],
)
def test_bad_controls_are_named(tmp_path: Path, line: str, message: str) -> None:
    assert message in _problem(tmp_path, BASE + SUNSPEC + line + "\n")


def test_controls_need_a_sunspec_device(tmp_path: Path) -> None:
    text = BASE + '[[meters]]\nname = "cc"\nregister_map = "epever/tracer-an"\n'
    problem = _problem(tmp_path, text + 'controls = ["opModConnect"]\n')
    assert "controls need driver 'sunspec', not 'modbus'" in problem
    assert "Traceback" not in problem


def test_dispatch_relays_must_be_configured_relays(tmp_path: Path) -> None:
    gpio = "[gpio]\nrelays = { boiler = 22 }\n"
    s = _load(tmp_path, BASE + SUNSPEC + gpio + 'dispatch_relays = ["boiler"]\n')
    assert s.gpio is not None and s.gpio.dispatch_relays == ["boiler"]
    problem = _problem(tmp_path, BASE + SUNSPEC + gpio + 'dispatch_relays = ["sauna"]\n')
    assert "gpio.dispatch_relays: no relay named 'sauna'" in problem


@pytest.fixture
def panel() -> Iterator[StatusPanel]:
    factory = MockFactory()
    p = StatusPanel(17, 27, RELAYS, pin_factory=factory)
    try:
        yield p
    finally:
        p.close()
        factory.reset()


async def test_gpio_relay_switches_its_load(panel: StatusPanel) -> None:
    relay = GpioRelayControl("relay boiler", panel, "boiler")
    assert relay.controls == {ControlMode.OP_MOD_CONNECT}
    await relay.apply(ControlMode.OP_MOD_CONNECT, 1)
    assert panel.relay_states() == {"boiler": True, "ev": False}
    assert panel.led.pin_factory.pin(5).state  # type: ignore[union-attr]
    await relay.apply(ControlMode.OP_MOD_CONNECT, 0)
    assert panel.relay_states()["boiler"] is False
    await relay.apply(ControlMode.OP_MOD_CONNECT, 1)
    await relay.release(ControlMode.OP_MOD_CONNECT)
    assert panel.relay_states()["boiler"] is False
    assert await relay.measure_w(ControlMode.OP_MOD_CONNECT) is None


async def test_gpio_relay_refuses_in_plain_words(panel: StatusPanel) -> None:
    relay = GpioRelayControl("relay ev", panel, "ev")
    with pytest.raises(ActuatorError, match="^relay ev does not take opModMaxLimW"):
        await relay.apply(ControlMode.OP_MOD_MAX_LIM_W, 100)
    with pytest.raises(ActuatorError, match=r"^relay ev: opModConnect value 2 is outside 0..1"):
        await relay.apply(ControlMode.OP_MOD_CONNECT, 2)
    assert panel.relay_states()["ev"] is False
    panel.close()  # a closed relay cannot switch: an ActuatorError, not a gpiozero traceback
    with pytest.raises(ActuatorError, match="^relay ev: relay 'ev' did not switch"):
        await relay.apply(ControlMode.OP_MOD_CONNECT, 1)
    with pytest.raises(ValueError, match="no relay named 'sauna'"):
        GpioRelayControl("relay sauna", panel, "sauna")


def test_make_actuators_builds_dispatch_relays_on_the_panel(
    tmp_path: Path, panel: StatusPanel
) -> None:
    settings = _load(
        tmp_path,
        BASE + "meters = []\n[gpio]\nrelays = { boiler = 5, ev = 6 }\ndispatch_relays = ['ev']\n",
    )
    actuators = make_actuators(settings, [], panel)
    assert [a.name for a in actuators] == ["relay ev"]
    with pytest.raises(ValueError, match="needs the status panel"):
        make_actuators(settings, [])
