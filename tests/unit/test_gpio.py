"""The status panel on gpiozero's mock pins: LED patterns, button presses, relays, the LED rule."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPin

from edge.gpio import AgentLedState, StatusPanel, led_state_for

LED_PIN, BUTTON_PIN = 17, 27
RELAYS = {"boiler": 5, "ev": 6}


def pause(seconds: float) -> None:
    """Block this (test) thread; gpiozero's own threads keep running."""
    threading.Event().wait(seconds)


def wait_for(cond: Callable[[], bool], timeout: float = 2.0) -> bool:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if cond():
            return True
        done.wait(0.01)
    return cond()


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    try:
        yield f
    finally:
        f.reset()


class Calls:
    def __init__(self) -> None:
        self.show = 0
        self.prov = 0

    def on_show(self) -> None:
        self.show += 1

    def on_prov(self) -> None:
        self.prov += 1


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def panel(factory: MockFactory, calls: Calls) -> Iterator[StatusPanel]:
    p = StatusPanel(
        LED_PIN,
        BUTTON_PIN,
        RELAYS,
        pin_factory=factory,
        long_press_s=0.3,
        on_show_status=calls.on_show,
        on_provisioning=calls.on_prov,
    )
    try:
        yield p
    finally:
        p.close()


def pin(factory: MockFactory, n: int) -> MockPin:
    return factory.pin(n)


def on_off_durations(p: MockPin) -> list[tuple[bool, float]]:
    """(state, how long it lasted) for every completed period in the pin's history."""
    states = p.states
    return [(states[i].state, states[i + 1].timestamp) for i in range(1, len(states) - 1)]


# LED ---------------------------------------------------------------------------------------------


def test_led_starts_dark_and_ok_is_steady_on(panel: StatusPanel, factory: MockFactory) -> None:
    led = pin(factory, LED_PIN)
    assert led.state is False
    assert panel.state is AgentLedState.OFF
    led.clear_states()
    panel.set_state(AgentLedState.OK)
    assert led.state is True
    pause(0.3)
    assert led.state is True
    assert [s.state for s in led.states] == [False, True]  # one change, then steady


def test_buffering_blinks_slowly(panel: StatusPanel, factory: MockFactory) -> None:
    led = pin(factory, LED_PIN)
    led.clear_states()
    panel.set_state(AgentLedState.BUFFERING)
    pause(2.5)
    periods = on_off_durations(led)
    assert [s for s, _ in periods[:2]] == [True, False]
    for _, length in periods[:2]:
        assert length == pytest.approx(1.0, abs=0.15)


def test_fault_blinks_fast(panel: StatusPanel, factory: MockFactory) -> None:
    led = pin(factory, LED_PIN)
    led.clear_states()
    panel.set_state(AgentLedState.FAULT)
    pause(0.75)
    periods = on_off_durations(led)
    assert len(periods) >= 4
    assert [s for s, _ in periods[:4]] == [True, False, True, False]
    for _, length in periods[:4]:
        assert length == pytest.approx(0.1, abs=0.05)


def test_same_state_does_not_restart_the_rhythm(panel: StatusPanel, factory: MockFactory) -> None:
    led = pin(factory, LED_PIN)
    panel.set_state(AgentLedState.BUFFERING)
    pause(0.2)
    led.clear_states()
    panel.set_state(AgentLedState.BUFFERING)  # the agent repeats its state every tick
    pause(0.3)
    assert [s.state for s in led.states] == [True]  # still in the first 1 s "on"


def test_provisioning_double_blinks(panel: StatusPanel, factory: MockFactory) -> None:
    led = pin(factory, LED_PIN)
    led.clear_states()
    panel.set_state(AgentLedState.PROVISIONING)
    pause(1.7)
    periods = on_off_durations(led)
    assert [s for s, _ in periods[:4]] == [True, False, True, False]
    on1, gap, on2, rest = (length for _, length in periods[:4])
    assert on1 == pytest.approx(0.2, abs=0.07)
    assert gap == pytest.approx(0.2, abs=0.07)
    assert on2 == pytest.approx(0.2, abs=0.07)
    assert rest == pytest.approx(0.8, abs=0.1)


def test_switching_from_pattern_to_ok_stops_it(panel: StatusPanel, factory: MockFactory) -> None:
    led = pin(factory, LED_PIN)
    panel.set_state(AgentLedState.PROVISIONING)
    pause(0.1)
    panel.set_state(AgentLedState.OK)
    led.clear_states()
    pause(0.6)
    assert led.state is True
    assert [s.state for s in led.states] == [True]


# Button ------------------------------------------------------------------------------------------


def test_short_press_shows_status(panel: StatusPanel, factory: MockFactory, calls: Calls) -> None:
    button = pin(factory, BUTTON_PIN)
    button.drive_low()
    pause(0.05)
    button.drive_high()
    assert wait_for(lambda: calls.show == 1)
    pause(0.4)
    assert calls.prov == 0
    assert not panel.provisioning


def test_long_press_enters_provisioning(
    panel: StatusPanel, factory: MockFactory, calls: Calls
) -> None:
    panel.set_state(AgentLedState.OK)
    button = pin(factory, BUTTON_PIN)
    button.drive_low()
    assert wait_for(lambda: calls.prov == 1)  # fires while still held
    assert panel.provisioning
    assert panel.state is AgentLedState.PROVISIONING
    pause(0.4)
    button.drive_high()
    pause(0.1)
    assert calls.prov == 1  # once per hold
    assert calls.show == 0  # a long press is not also a short one
    panel.set_state(AgentLedState.OK)  # the agent's tick cannot override provisioning
    assert panel.state is AgentLedState.PROVISIONING
    panel.end_provisioning(AgentLedState.BUFFERING)
    assert panel.state.value == "buffering"
    assert not panel.provisioning


def test_press_shorter_than_hold_time_is_not_long(
    panel: StatusPanel, factory: MockFactory, calls: Calls
) -> None:
    button = pin(factory, BUTTON_PIN)
    button.drive_low()
    pause(0.15)
    button.drive_high()
    pause(0.4)
    assert (calls.show, calls.prov) == (1, 0)


async def test_callbacks_are_handed_to_the_event_loop(factory: MockFactory) -> None:
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, int]] = []
    provisioned = asyncio.Event()
    main_thread = threading.get_ident()

    def on_show() -> None:
        seen.append(("show", threading.get_ident()))

    async def on_prov() -> None:
        seen.append(("prov", threading.get_ident()))
        provisioned.set()  # an asyncio object, safe only on the loop's thread

    p = StatusPanel(
        LED_PIN,
        BUTTON_PIN,
        {},
        pin_factory=factory,
        long_press_s=0.2,
        on_show_status=on_show,
        on_provisioning=on_prov,
        loop=loop,
    )
    try:
        button = pin(factory, BUTTON_PIN)
        button.drive_low()
        button.drive_high()
        button.drive_low()  # the hold fires in gpiozero's hold thread
        await asyncio.wait_for(provisioned.wait(), 2.0)
        button.drive_high()
        await asyncio.sleep(0.05)
    finally:
        p.close()
    assert seen == [("show", main_thread), ("prov", main_thread)]


# Relays ------------------------------------------------------------------------------------------


def test_relays_start_off_and_switch_their_pins(panel: StatusPanel, factory: MockFactory) -> None:
    assert panel.relay_states() == {"boiler": False, "ev": False}
    assert pin(factory, 5).state is False
    panel.set_relay("boiler", True)
    assert pin(factory, 5).state is True
    assert pin(factory, 6).state is False
    assert panel.relay_states() == {"boiler": True, "ev": False}
    panel.set_relay("boiler", False)
    assert pin(factory, 5).state is False


def test_active_low_relays(factory: MockFactory) -> None:
    p = StatusPanel(LED_PIN, BUTTON_PIN, {"pump": 22}, pin_factory=factory, relay_active_high=False)
    try:
        assert pin(factory, 22).state is True  # off = high on an active-low board
        p.set_relay("pump", True)
        assert pin(factory, 22).state is False
        assert p.relay_states() == {"pump": True}
    finally:
        p.close()


def test_unknown_relay_is_a_value_error(panel: StatusPanel) -> None:
    with pytest.raises(ValueError, match="no relay named 'heater'"):
        panel.set_relay("heater", True)


def test_close_switches_everything_off(factory: MockFactory) -> None:
    p = StatusPanel(LED_PIN, BUTTON_PIN, {"boiler": 5}, pin_factory=factory)
    p.set_state(AgentLedState.FAULT)
    p.set_relay("boiler", True)
    p.close()
    assert pin(factory, 5).state is False
    assert pin(factory, LED_PIN).state is False
    p.close()  # twice is fine
    p.set_state(AgentLedState.OK)  # ignored after close
    # The pins are free again.
    StatusPanel(LED_PIN, BUTTON_PIN, {"boiler": 5}, pin_factory=factory).close()


# The LED rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("connected", "waiting", "unavailable", "provisioning", "kw", "expected"),
    [
        (True, 0, 0, False, {}, AgentLedState.OK),
        (True, 3, 0, False, {}, AgentLedState.BUFFERING),
        (False, 0, 0, False, {}, AgentLedState.BUFFERING),
        (False, 5, 0, False, {"disconnected_s": 60}, AgentLedState.BUFFERING),
        (False, 5, 0, False, {"disconnected_s": 300}, AgentLedState.FAULT),
        (False, 0, 0, False, {"disconnected_s": 30, "fault_after_s": 20}, AgentLedState.FAULT),
        (True, 0, 1, False, {}, AgentLedState.FAULT),
        (True, 0, 1, False, {"meters_total": 2}, AgentLedState.OK),
        (True, 2, 1, False, {"meters_total": 2}, AgentLedState.BUFFERING),
        (True, 0, 2, False, {"meters_total": 2}, AgentLedState.FAULT),
        (True, 0, 0, False, {"meters_total": 0}, AgentLedState.OK),
        (True, 0, 0, True, {}, AgentLedState.PROVISIONING),
        (False, 9, 2, True, {"meters_total": 2, "disconnected_s": 1e6}, AgentLedState.PROVISIONING),
        # connected: a long disconnect in the past no longer matters
        (True, 0, 0, False, {"disconnected_s": 1e6}, AgentLedState.OK),
    ],
)
def test_led_state_for(
    connected: bool,
    waiting: int,
    unavailable: int,
    provisioning: bool,
    kw: dict[str, Any],
    expected: AgentLedState,
) -> None:
    assert led_state_for(connected, waiting, unavailable, provisioning, **kw) is expected
