"""The Pi's front panel: a status LED, a push button and relay outputs for controllable loads.

Owns: every use of gpiozero in gridmint (no other module imports it) and the pure rule that turns
the agent's condition into an LED state (`led_state_for`).

LED patterns (one LED, so each state has its own rhythm):

    OK            steady on
    BUFFERING     slow blink, 1 s on / 1 s off (tokens are waiting for the cloud)
    FAULT         fast blink, 0.1 s on / 0.1 s off
    PROVISIONING  double blink: on 0.2, off 0.2, on 0.2, off 0.8 (repeats)
    OFF           dark (before start and after close)

Button: a short press (released before `long_press_s`) calls `on_show_status`; holding it for
`long_press_s` or longer calls `on_provisioning` once and switches the LED to PROVISIONING.

gpiozero runs button callbacks in its own threads. Give `loop=` and the callbacks are handed to
that asyncio loop with `call_soon_threadsafe` (coroutine functions are scheduled as tasks there),
so they may touch asyncio objects freely. Without a loop they run in the gpiozero thread.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from gpiozero import LED, Button, DigitalOutputDevice

log = logging.getLogger(__name__)

Callback = Callable[[], Any]


class AgentLedState(enum.Enum):
    """What the status LED shows."""

    OFF = "off"
    OK = "ok"
    BUFFERING = "buffering"
    FAULT = "fault"
    PROVISIONING = "provisioning"


# Timings in seconds.
SLOW_BLINK = (1.0, 1.0)
FAST_BLINK = (0.1, 0.1)
DOUBLE_BLINK_STEP_S = 0.2
# One step per DOUBLE_BLINK_STEP_S: on, off, on, then four steps off.
DOUBLE_BLINK_PATTERN = (1, 0, 1, 0, 0, 0, 0)

DEFAULT_FAULT_AFTER_S = 300.0


def led_state_for(
    connected: bool,
    waiting_tokens: int,
    meters_unavailable: int,
    provisioning: bool,
    *,
    meters_total: int | None = None,
    disconnected_s: float = 0.0,
    fault_after_s: float = DEFAULT_FAULT_AFTER_S,
) -> AgentLedState:
    """Choose the LED state from the agent's condition. The first matching rule wins:

    1. PROVISIONING if the panel (or the agent) is in provisioning mode.
    2. FAULT if no meter can be read (every meter unavailable: `meters_unavailable >=
       meters_total`; when `meters_total` is not given, any unavailable meter counts) or if the
       broker has been unreachable for `fault_after_s` or longer (`disconnected_s`).
    3. BUFFERING if tokens are waiting for the cloud or the broker is not connected (briefly).
    4. OK otherwise: meters read, connected, nothing waiting.
    """
    if provisioning:
        return AgentLedState.PROVISIONING
    if meters_total is None:
        no_meter = meters_unavailable > 0
    else:
        no_meter = meters_total > 0 and meters_unavailable >= meters_total
    if no_meter or (not connected and disconnected_s >= fault_after_s):
        return AgentLedState.FAULT
    if waiting_tokens > 0 or not connected:
        return AgentLedState.BUFFERING
    return AgentLedState.OK


class StatusPanel:
    """Status LED, push button and named relays on the Pi's GPIO header (BCM pin numbers).

    `pin_factory` is passed to every gpiozero device (tests use `gpiozero.pins.mock.MockFactory`);
    None means gpiozero's default for the board. Relays start off; `relay_active_high=False`
    suits the common relay boards that switch on a low input.
    """

    def __init__(
        self,
        led_pin: int,
        button_pin: int,
        relay_pins: Mapping[str, int],
        pin_factory: Any = None,
        long_press_s: float = 3.0,
        *,
        on_show_status: Callback | None = None,
        on_provisioning: Callback | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        relay_active_high: bool = True,
        button_pull_up: bool = True,
    ):
        if long_press_s <= 0:
            raise ValueError("long_press_s must be positive")
        self.long_press_s = long_press_s
        self.on_show_status = on_show_status
        self.on_provisioning = on_provisioning
        self.loop = loop
        self._lock = threading.Lock()
        self._state = AgentLedState.OFF
        self._provisioning = False
        self._pressed_at: float | None = None
        self._long_fired = False
        self._closed = False
        self._relays: dict[str, DigitalOutputDevice] = {}
        self.led = LED(led_pin, initial_value=False, pin_factory=pin_factory)
        try:
            self.button = Button(
                button_pin,
                pull_up=button_pull_up,
                hold_time=long_press_s,
                pin_factory=pin_factory,
            )
            for name, pin in relay_pins.items():
                self._relays[name] = DigitalOutputDevice(
                    pin,
                    active_high=relay_active_high,
                    initial_value=False,
                    pin_factory=pin_factory,
                )
        except Exception:
            self.close()
            raise
        self.button.when_pressed = self._pressed
        self.button.when_held = self._held
        self.button.when_released = self._released

    # LED -----------------------------------------------------------------------------------------

    @property
    def state(self) -> AgentLedState:
        """The state the LED currently shows."""
        return self._state

    @property
    def provisioning(self) -> bool:
        """True from a long press until `end_provisioning()`."""
        return self._provisioning

    def set_state(self, state: AgentLedState) -> None:
        """Show `state`. Setting the state already shown changes nothing (the rhythm goes on).

        While in provisioning mode the LED keeps the PROVISIONING pattern; call
        `end_provisioning()` first.
        """
        with self._lock:
            if self._closed:
                return
            if self._provisioning:
                state = AgentLedState.PROVISIONING
            if state is self._state:
                return
            self._state = state
            self._show(state)

    def end_provisioning(self, state: AgentLedState = AgentLedState.OK) -> None:
        """Leave provisioning mode and show `state`."""
        with self._lock:
            self._provisioning = False
        self.set_state(state)

    def _show(self, state: AgentLedState) -> None:
        led = self.led
        led.source = None  # stops a running pattern thread
        if state is AgentLedState.OK:
            led.on()
        elif state is AgentLedState.BUFFERING:
            led.blink(on_time=SLOW_BLINK[0], off_time=SLOW_BLINK[1], n=None)
        elif state is AgentLedState.FAULT:
            led.blink(on_time=FAST_BLINK[0], off_time=FAST_BLINK[1], n=None)
        elif state is AgentLedState.PROVISIONING:
            led.source_delay = DOUBLE_BLINK_STEP_S
            led.source = itertools.cycle(DOUBLE_BLINK_PATTERN)
        else:
            led.off()

    # Button --------------------------------------------------------------------------------------

    def _pressed(self) -> None:
        with self._lock:
            self._pressed_at = time.monotonic()
            self._long_fired = False

    def _held(self) -> None:
        self._long_press()

    def _released(self) -> None:
        with self._lock:
            pressed_at, self._pressed_at = self._pressed_at, None
            long_fired = self._long_fired
        if long_fired or pressed_at is None:
            return
        if time.monotonic() - pressed_at >= self.long_press_s:
            # Released just as the hold thread was about to fire: still a long press.
            self._long_press()
        else:
            self._dispatch(self.on_show_status)

    def _long_press(self) -> None:
        with self._lock:
            if self._long_fired or self._closed:
                return
            self._long_fired = True
            self._provisioning = True
            if self._state is not AgentLedState.PROVISIONING:
                self._state = AgentLedState.PROVISIONING
                self._show(AgentLedState.PROVISIONING)
        self._dispatch(self.on_provisioning)

    def _dispatch(self, callback: Callback | None) -> None:
        if callback is None:
            return
        loop = self.loop
        if loop is None:
            try:
                callback()
            except Exception:
                log.exception("status panel callback failed")
            return
        if loop.is_closed():
            return
        if inspect.iscoroutinefunction(callback):
            loop.call_soon_threadsafe(_start_task, loop, callback)
        else:
            loop.call_soon_threadsafe(_call_logged, callback)

    # Relays --------------------------------------------------------------------------------------

    def set_relay(self, name: str, on: bool) -> None:
        """Switch the named relay on or off."""
        relay = self._relays.get(name)
        if relay is None:
            known = ", ".join(sorted(self._relays)) or "none"
            raise ValueError(f"no relay named {name!r} (known relays: {known})")
        if on:
            relay.on()
        else:
            relay.off()

    def relay_states(self) -> dict[str, bool]:
        """Each relay's name and whether it is on."""
        return {name: bool(relay.value) for name, relay in self._relays.items()}

    # Life cycle ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Switch relays and LED off and release the pins. Safe to call twice."""
        with self._lock:
            self._closed = True
            self._state = AgentLedState.OFF
        for relay in self._relays.values():
            try:
                relay.off()
                relay.close()
            except Exception:
                log.exception("closing a relay failed")
        self._relays.clear()
        button = getattr(self, "button", None)
        if button is not None:
            button.close()
        try:
            self.led.source = None
            self.led.off()
        except Exception:
            log.debug("LED already closed")
        self.led.close()

    def __enter__(self) -> StatusPanel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _call_logged(callback: Callback) -> None:
    try:
        callback()
    except Exception:
        log.exception("status panel callback failed")


def _start_task(loop: asyncio.AbstractEventLoop, callback: Callback) -> None:
    task = loop.create_task(callback())
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


_TASKS: set[asyncio.Task[Any]] = set()
