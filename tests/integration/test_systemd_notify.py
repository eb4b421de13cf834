"""sd_notify over a real unix datagram socket, the watchdog loop, the shipped unit and rules."""

from __future__ import annotations

import asyncio
import configparser
import os
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge import systemd

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "firmware-configs" / "systemd" / "gridmint-edge.service"
RULES = ROOT / "firmware-configs" / "udev" / "99-gridmint-serial.rules"


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket standing in for systemd; $NOTIFY_SOCKET points at it."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on the socket."""
    out: list[str] = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2.0)
    return out


def test_messages_arrive(notify_socket: socket.socket) -> None:
    assert systemd.ready()
    assert notify_socket.recv(4096) == b"READY=1"
    assert systemd.status("3 tokens waiting\nbroker down")
    assert notify_socket.recv(4096) == b"STATUS=3 tokens waiting broker down"
    assert systemd.watchdog_ping()
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    assert systemd.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"
    assert systemd.ready("meters ok")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=meters ok"
    assert systemd.extend_timeout(30)
    assert notify_socket.recv(4096) == b"EXTEND_TIMEOUT_USEC=30000000"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"gridmint-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.ready() is False
    assert systemd.watchdog_ping() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert systemd.ready() is False  # a dead socket is reported, never raised
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.ready() is False
    assert systemd.notify("READY=1", env={}) is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "60000000"}, 60.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "<me>"}, 0.5),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    env = {k: (str(os.getpid()) if v == "<me>" else v) for k, v in env.items()}
    assert systemd.watchdog_interval_s(env) == expected


async def test_watchdog_pings_while_healthy_and_stops_when_not(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: a ping every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    healthy = True
    stop = asyncio.Event()
    task = asyncio.create_task(systemd.run_watchdog(lambda: healthy, stop))
    await asyncio.sleep(0.55)
    pings = received(notify_socket)
    assert 4 <= len(pings) <= 7
    assert set(pings) == {"WATCHDOG=1"}

    healthy = False  # e.g. the sample loop is stuck
    await asyncio.sleep(0.15)
    received(notify_socket)  # at most one ping in flight when it turned
    await asyncio.sleep(0.5)
    assert received(notify_socket) == []

    healthy = True  # recovered before systemd acted: pings resume
    await asyncio.sleep(0.25)
    assert received(notify_socket)

    stop.set()
    await asyncio.wait_for(task, 1.0)
    received(notify_socket)
    await asyncio.sleep(0.25)
    assert received(notify_socket) == []


async def test_watchdog_health_check_that_raises_is_unhealthy(
    notify_socket: socket.socket,
) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    stop = asyncio.Event()
    task = asyncio.create_task(systemd.run_watchdog(broken, stop, interval_s=0.1))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(task, 1.0)
    assert received(notify_socket) == []


async def test_watchdog_without_interval_returns_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    await asyncio.wait_for(systemd.run_watchdog(lambda: True, asyncio.Event()), 0.5)


def test_heartbeat() -> None:
    t = [100.0]
    hb = systemd.Heartbeat(30.0, clock=lambda: t[0])
    assert hb.healthy()
    t[0] += 31
    assert not hb.healthy()
    hb.beat()
    assert hb.healthy()
    assert hb.age_s() == 0
    with pytest.raises(ValueError, match="positive"):
        systemd.Heartbeat(0)


# Shipped files -----------------------------------------------------------------------------------


def test_service_file() -> None:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(SERVICE.read_text(encoding="utf-8"))
    svc = cp["Service"]
    assert svc["Type"] == "notify"
    assert int(svc["WatchdogSec"]) == 60
    assert svc["User"] == "gridmint"
    assert svc["Group"] == "gridmint"
    assert set(svc["SupplementaryGroups"].split()) == {"dialout", "gpio"}
    assert svc["ExecStart"] == (
        "/opt/gridmint/.venv/bin/gridmint edge run --config /etc/gridmint/edge.toml"
    )
    assert svc["Restart"] == "always"
    assert svc["RestartSec"] == "5"
    assert svc["StandardOutput"] == "journal"
    assert svc["StateDirectory"] == "gridmint"
    assert svc["ProtectSystem"] == "strict"
    assert svc["ReadWritePaths"] == "/var/lib/gridmint"
    assert svc["PrivateTmp"] == "true"
    assert svc["NoNewPrivileges"] == "true"
    assert "PrivateDevices" not in svc  # would hide the serial ports and GPIO
    assert "ProtectClock" not in svc  # would deny the adjtimex clock check
    after = cp["Unit"]["After"].split()
    assert "network-online.target" in after
    assert "time-sync.target" in after
    assert cp["Install"]["WantedBy"] == "multi-user.target"


_ASSIGNMENT = re.compile(
    r'^(?P<key>[A-Z_]+(?:\{[^}]+\})?)\s*(?P<op>==|!=|\+=|-=|:=|=)\s*"(?P<value>[^"]*)"$'
)


def _rule_pairs(line: str) -> list[tuple[str, str, str]]:
    pairs = []
    for part in line.split(", "):
        m = _ASSIGNMENT.match(part.strip())
        assert m, f"not KEY==value / KEY=value: {part!r} in {line!r}"
        pairs.append((m["key"], m["op"], m["value"]))
    return pairs


def test_udev_rules_parse() -> None:
    rules = [
        _rule_pairs(line)
        for line in RULES.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    gotos = {v for r in rules for k, _, v in r if k == "GOTO"}
    labels = {v for r in rules for k, _, v in r if k == "LABEL"}
    assert gotos == labels == {"gridmint_serial_end"}

    links: dict[str, str] = {}
    for r in rules:
        keys = {k: v for k, _, v in r}
        if "SYMLINK" not in keys:
            continue
        assert keys["GROUP"] == "dialout"
        assert keys["MODE"] == "0660"
        ident = keys["ATTRS{idVendor}"] + ":" + keys.get("ATTRS{idProduct}", "*")
        if "ATTRS{product}" in keys:
            ident += " " + keys["ATTRS{product}"]
        links[ident] = keys["SYMLINK"]
    assert links == {
        "0403:* VE Direct cable": "gridmint-vedirect-$env{GRIDMINT_SUFFIX}",
        "0403:6001": "gridmint-rs485-$env{GRIDMINT_SUFFIX}",
        "1a86:7523": "gridmint-rs485-$env{GRIDMINT_SUFFIX}",
        "10c4:ea60": "gridmint-rs485-$env{GRIDMINT_SUFFIX}",
        "04e2:1411": "gridmint-rs485-$env{GRIDMINT_SUFFIX}",
    }
    # The VE.Direct rule comes before the generic FTDI one and ends the file for that cable.
    order = [i for i, r in enumerate(rules) if ("ATTRS{idVendor}", "==", "0403") in r]
    assert ("GOTO", "=", "gridmint_serial_end") in rules[order[0]]
    assert ("ATTRS{product}", "==", "VE Direct cable") in rules[order[0]]
