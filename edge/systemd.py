"""Talk to systemd from the edge agent: readiness, status text and the watchdog (sd_notify).

Owns: the sd_notify datagram protocol, without libsystemd or any other dependency. Every function
is a no-op returning False when the agent does not run under systemd ($NOTIFY_SOCKET unset), so
the same code runs on a laptop, in tests and on the Pi.

Protocol (sd_notify(3)): newline-separated KEY=VALUE assignments in one datagram sent to the
AF_UNIX socket named by $NOTIFY_SOCKET; a leading '@' names a socket in the abstract namespace.
The watchdog (WatchdogSec= in the unit) hands the interval to the service as $WATCHDOG_USEC
(microseconds) and $WATCHDOG_PID; the service must send WATCHDOG=1 more often than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

_SEND_TIMEOUT_S = 1.0


def _socket_address(raw: str) -> str | bytes | None:
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None  # vsock:... and other forms are not used on the Pi


def notify(message: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send `message` (e.g. "READY=1") to systemd. True if it was delivered to the socket.

    Never raises: a missing or broken socket gives False (and a debug log line).
    """
    environ = os.environ if env is None else env
    raw = environ.get("NOTIFY_SOCKET", "")
    if not raw:
        return False
    address = _socket_address(raw)
    if address is None:
        log.debug("unsupported NOTIFY_SOCKET %r", raw)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(_SEND_TIMEOUT_S)
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.debug("sd_notify %r failed: %s", message, exc)
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """Tell systemd that start-up has finished (Type=notify services stay "activating" until)."""
    msg = "READY=1"
    if status_text:
        msg += f"\nSTATUS={_one_line(status_text)}"
    return notify(msg)


def status(text: str) -> bool:
    """Set the one-line status shown by `systemctl status`."""
    return notify(f"STATUS={_one_line(text)}")


def stopping() -> bool:
    """Tell systemd that the service is shutting down (e.g. while the outbox drains)."""
    return notify("STOPPING=1")


def watchdog_ping() -> bool:
    """Reset the watchdog timer."""
    return notify("WATCHDOG=1")


def extend_timeout(seconds: float) -> bool:
    """Ask for `seconds` more before a start/stop times out (a long drain or migration)."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def watchdog_interval_s(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog interval systemd expects pings within, or None if no watchdog is set.

    Follows sd_watchdog_enabled(3): $WATCHDOG_USEC must be a positive integer, and if
    $WATCHDOG_PID is set it must be this process (otherwise the watchdog is for another one).
    """
    environ = os.environ if env is None else env
    raw_usec = environ.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw_usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    raw_pid = environ.get("WATCHDOG_PID", "")
    if raw_pid:
        try:
            pid = int(raw_pid)
        except ValueError:
            return None
        if pid != os.getpid():
            return None
    return usec / 1_000_000


async def run_watchdog(
    is_healthy: Callable[[], bool],
    stop: asyncio.Event,
    *,
    interval_s: float | None = None,
) -> None:
    """Ping the watchdog every half interval while `is_healthy()` says so, until `stop` is set.

    When the agent is unhealthy (a loop stuck, no sample for too long) no ping is sent, so systemd
    kills and restarts the service after WatchdogSec. `is_healthy` raising counts as unhealthy.
    `interval_s` overrides the interval from the environment; with neither this returns at once.
    """
    interval = interval_s if interval_s is not None else watchdog_interval_s()
    if interval is None or interval <= 0:
        return
    period = interval / 2
    was_healthy = True
    while not stop.is_set():
        try:
            healthy = bool(is_healthy())
        except Exception as exc:
            log.warning("health check failed: %s", exc)
            healthy = False
        if healthy:
            watchdog_ping()
        elif was_healthy:
            log.warning("agent unhealthy: withholding watchdog pings, systemd will restart it")
        was_healthy = healthy
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period)


class Heartbeat:
    """Liveness from the agent's own loops: healthy while `beat()` was called recently.

    Give `heartbeat.healthy` to `run_watchdog`. A heartbeat that never beat is healthy for
    `max_age_s` after creation, so a slow start is not a failure.
    """

    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.monotonic):
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        self.max_age_s = max_age_s
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        """Record that the loop made progress."""
        self._last = self._clock()

    def age_s(self) -> float:
        """Seconds since the last beat."""
        return self._clock() - self._last

    def healthy(self) -> bool:
        """True if the last beat is at most `max_age_s` old."""
        return self.age_s() <= self.max_age_s
