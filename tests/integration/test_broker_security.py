"""The generated Mosquitto configuration against the real broker: mutual TLS, ACL, CRL, expiry.

Debian's Mosquitto 2.0.11 with cloud/broker_config.py's mosquitto.conf and ACL and certificates
from cloud/pki.py's DeviceCA. Clients are mqttlink.MqttLink with an ssl.SSLContext.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloud.broker_config import password_file_line, render_acl, render_mosquitto
from cloud.pki import DeviceCA, describe, make_device_key_and_csr, write_private_key
from mqttlink import BrokerAddress, MqttLink, Subscription
from protocol.topics import Channel, topic
from tests.helpers.services import ConfiguredMosquitto, free_port, wait_port

pytestmark = pytest.mark.broker

AGG = "gridmint-aggregator"
NEGATIVE_WAIT_S = 1.0  # a refused connection is decided within the TLS handshake


@dataclass
class Pki:
    """Everything one test broker needs, on disk under `dir`."""

    dir: Path
    ca: DeviceCA
    now: datetime
    creds: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # name -> (cert, key)

    @property
    def ca_path(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def crl_path(self) -> Path:
        return self.dir / "crl.pem"

    def device(self, name: str, site: str, *, now: datetime | None = None, days: float = 30) -> int:
        key_pem, csr_pem = make_device_key_and_csr(name)
        cert_pem = self.ca.issue_client_cert(csr_pem, name, site, days, now or self.now)
        return self._store(name, cert_pem, key_pem)

    def _store(self, label: str, cert_pem: bytes, key_pem: bytes) -> int:
        cert, key = self.dir / f"{label}.crt", self.dir / f"{label}.key"
        cert.write_bytes(cert_pem)
        write_private_key(key, key_pem)
        self.creds[label] = (cert, key)
        return describe(cert_pem).serial

    def write_crl(self) -> None:
        self.crl_path.write_bytes(self.ca.crl_pem(self.now, next_update_hours=1))


@dataclass
class Setup:
    pki: Pki
    broker: ConfiguredMosquitto
    acl_path: Path
    serials: dict[str, int]
    loopback_port: int
    log: Path


def _build(tmp_path: Path, exact_acl: bool) -> Setup:
    now = datetime.now(UTC)
    ca = DeviceCA.create("gridmint test device CA", 365, now)
    pki = Pki(tmp_path, ca, now)
    ca.save(tmp_path)
    srv_key, srv_cert = ca.issue_server_cert(["127.0.0.1", "localhost"], 30, now)
    pki._store("server", srv_cert, srv_key)
    serials = {
        "pi-a": pki.device("pi-a", "site-1"),
        "pi-b": pki.device("pi-b", "site-2"),
        AGG: pki.device(AGG, "cloud"),
        "pi-revoked": pki.device("pi-revoked", "site-1"),
        # issued ten days ago for one day: notAfter is nine days over
        "pi-expired": pki.device("pi-expired", "site-1", now=now - timedelta(days=10), days=1),
    }
    ca.revoke(serials["pi-revoked"], "key_compromise", now)
    pki.write_crl()
    devices = [("site-1", "pi-a"), ("site-2", "pi-b"), ("site-1", "pi-revoked")]
    devices.append(("site-1", "pi-expired"))
    acl = tmp_path / "acl"
    acl.write_text(render_acl(AGG, devices if exact_acl else None))
    passwd = tmp_path / "passwd"
    passwd.write_text(password_file_line(AGG, "loopback-secret"))
    passwd.chmod(0o600)
    port, loopback = free_port(), free_port()
    log = tmp_path / "mosquitto.log"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        render_mosquitto(
            tmp_path,
            port,
            pki.ca_path,
            pki.creds["server"][0],
            pki.creds["server"][1],
            pki.crl_path,
            acl,
            plain_loopback_port=loopback,
            bind_address="127.0.0.1",
            loopback_password_file=passwd,
            log_file=log,
            run_as_user="root" if os.geteuid() == 0 else None,
        )
    )
    broker = ConfiguredMosquitto(conf, port)
    broker.start()
    wait_port(loopback, 5.0)
    return Setup(pki, broker, acl, serials, loopback, log)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = _build(tmp_path, exact_acl=True)
    try:
        yield s
    finally:
        s.broker.stop()


@pytest.fixture
def pattern_setup(tmp_path: Path) -> Iterator[Setup]:
    s = _build(tmp_path, exact_acl=False)
    try:
        yield s
    finally:
        s.broker.stop()


# ---- clients -----------------------------------------------------------------------------------


def tls_context(s: Setup, name: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(s.pki.ca_path))
    if name is not None:
        cert, key = s.pki.creds[name]
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


Inbox = asyncio.Queue[tuple[str, bytes]]


def collector() -> tuple[Inbox, Callable[[str, bytes], Awaitable[None]]]:
    q: Inbox = asyncio.Queue()

    async def handle(t: str, payload: bytes) -> None:
        q.put_nowait((t, payload))

    return q, handle


@contextlib.asynccontextmanager
async def client(
    s: Setup, name: str | None, subscribe: list[str] | None = None, *, must_connect: bool = True
) -> AsyncIterator[tuple[MqttLink, Inbox]]:
    q, handle = collector()
    link = MqttLink(
        BrokerAddress("127.0.0.1", s.broker.port, tls=True),
        f"test-{name or 'anonymous'}",
        clean_session=True,
        subscriptions=[Subscription(f, handle) for f in subscribe or []],
        tls_context=tls_context(s, name),
        reconnect_min_s=5,
        reconnect_max_s=5,
    )
    await link.start()
    try:
        if must_connect:
            assert await link.wait_ready(5.0), f"{name} could not connect and subscribe"
        yield link, q
    finally:
        await link.stop()


async def connects(s: Setup, name: str | None) -> bool:
    async with client(s, name, must_connect=False) as (link, _):
        return await link.wait_connected(NEGATIVE_WAIT_S)


def _handshake_error(s: Setup, name: str | None) -> str | None:
    ctx = tls_context(s, name)
    # `tls_version tlsv1.2` is a minimum in Mosquitto 2.0: TLS 1.3 is negotiated by default, and
    # there a refused client certificate shows only after the handshake, often as a bare EOF.
    # With TLS 1.2 the broker's alert (revoked, expired, ...) arrives inside the handshake.
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        with (
            socket.create_connection(("127.0.0.1", s.broker.port), timeout=5.0) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() == "TLSv1.2"
            tls.sendall(b"\x10\x00")  # a truncated CONNECT: the broker answers by closing
            tls.recv(1)
    except (ssl.SSLError, ConnectionError) as exc:
        return str(exc)
    return None


async def handshake_error(s: Setup, name: str | None) -> str | None:
    """The TLS error a client with this certificate gets; None if the handshake succeeded."""
    return await asyncio.to_thread(_handshake_error, s, name)


async def publish_until_seen(link: MqttLink, t: str, inbox: Inbox, timeout_s: float = 5.0) -> None:
    """Publish a control message on `t` and wait until it arrives in `inbox` (the subscriber is
    ready: its SUBACK came before `client` yielded it)."""
    marker = b"control"
    assert await link.publish(t, marker)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(TimeoutError):
            if await asyncio.wait_for(inbox.get(), 0.3) == (t, marker):
                return
    raise AssertionError(f"{t} never arrived")


def drain(inbox: Inbox) -> list[tuple[str, bytes]]:
    out = []
    while not inbox.empty():
        out.append(inbox.get_nowait())
    return out


A_TOKENS = topic("site-1", "pi-a", Channel.TOKENS)
B_TOKENS = topic("site-2", "pi-b", Channel.TOKENS)
A_COMMANDS = topic("site-1", "pi-a", Channel.COMMANDS)
B_COMMANDS = topic("site-2", "pi-b", Channel.COMMANDS)
ALL_TOKENS = "gridmint/v1/sites/+/devices/+/tokens"


# ---- the acceptance criteria -------------------------------------------------------------------


async def test_device_publishes_only_under_its_own_topics(setup: Setup) -> None:
    async with (
        client(setup, AGG, [ALL_TOKENS]) as (_agg, agg_in),
        client(setup, "pi-a") as (pi_a, _),
    ):
        await publish_until_seen(pi_a, A_TOKENS, agg_in)
        drain(agg_in)
        # Mosquitto acknowledges an unauthorised MQTT 3.1.1 publish and drops it silently.
        assert await pi_a.publish(B_TOKENS, b"forged")
        assert await pi_a.publish(topic("site-2", "pi-a", Channel.TOKENS), b"other site")
        assert await pi_a.publish(A_TOKENS, b"after")  # positive control, same connection
        got = await asyncio.wait_for(agg_in.get(), 5.0)
        assert got == (A_TOKENS, b"after")  # ordered: anything forged would have come first
        assert drain(agg_in) == []


async def test_device_cannot_read_another_devices_commands(setup: Setup) -> None:
    async with (
        client(setup, AGG, [ALL_TOKENS]) as (agg, agg_in),
        client(setup, "pi-a", [B_COMMANDS, A_COMMANDS]) as (pi_a, a_in),
        client(setup, "pi-b", [B_COMMANDS]) as (pi_b, b_in),
    ):
        # once the aggregator sees a device's publish, that device's SUBSCRIBE was handled
        await publish_until_seen(pi_a, A_TOKENS, agg_in)
        await publish_until_seen(pi_b, B_TOKENS, agg_in)
        assert await agg.publish(B_COMMANDS, b"for pi-b")
        assert await agg.publish(A_COMMANDS, b"for pi-a")  # control, after the one for pi-b
        assert await asyncio.wait_for(b_in.get(), 5.0) == (B_COMMANDS, b"for pi-b")
        assert await asyncio.wait_for(a_in.get(), 5.0) == (A_COMMANDS, b"for pi-a")
        assert drain(a_in) == []


async def test_device_cannot_read_tokens_of_others(setup: Setup) -> None:
    async with (
        client(setup, AGG, [ALL_TOKENS]) as (_agg, agg_in),
        client(setup, "pi-a", [ALL_TOKENS, A_COMMANDS]) as (pi_a, a_in),
        client(setup, "pi-b") as (pi_b, _),
    ):
        await publish_until_seen(pi_a, A_TOKENS, agg_in)
        await publish_until_seen(pi_b, B_TOKENS, agg_in)
        assert drain(a_in) == []


async def test_aggregator_cannot_publish_tokens_for_a_device(setup: Setup) -> None:
    async with (
        client(setup, AGG, [ALL_TOKENS]) as (agg, agg_in),
        client(setup, "pi-a") as (pi_a, _),
    ):
        await publish_until_seen(pi_a, A_TOKENS, agg_in)
        assert await agg.publish(A_TOKENS, b"forged by the aggregator")
        assert await pi_a.publish(A_TOKENS, b"after")
        assert await asyncio.wait_for(agg_in.get(), 5.0) == (A_TOKENS, b"after")


async def test_revoked_expired_and_certificateless_clients_cannot_connect(setup: Setup) -> None:
    assert await connects(setup, "pi-a")
    assert await handshake_error(setup, "pi-a") is None
    for name, why in [
        ("pi-revoked", "CERTIFICATE_REVOKED"),
        ("pi-expired", "CERTIFICATE_EXPIRED"),
        (None, ""),  # the broker just drops the handshake (no alert on every run)
    ]:
        err = await handshake_error(setup, name)
        assert err is not None and why in err.upper(), (name, err)
        assert not await connects(setup, name)


async def test_loopback_listener_needs_the_aggregator_password(setup: Setup) -> None:
    agg_in, handle = collector()
    ok = MqttLink(
        BrokerAddress("127.0.0.1", setup.loopback_port),
        "loopback-agg",
        clean_session=True,
        subscriptions=[Subscription(ALL_TOKENS, handle)],
    )
    ok._client.username_pw_set(AGG, "loopback-secret")  # MqttLink has no credentials yet
    wrong = MqttLink(BrokerAddress("127.0.0.1", setup.loopback_port), "loopback-x")
    wrong._client.username_pw_set(AGG, "guess")
    anonymous = MqttLink(BrokerAddress("127.0.0.1", setup.loopback_port), "loopback-anon")
    for link in (ok, wrong, anonymous):
        await link.start()
    try:
        assert await ok.wait_connected(5.0)
        assert not await wrong.wait_connected(NEGATIVE_WAIT_S)
        assert not await anonymous.wait_connected(0.1)
        async with client(setup, "pi-a") as (pi_a, _):
            await publish_until_seen(pi_a, A_TOKENS, agg_in)
    finally:
        for link in (ok, wrong, anonymous):
            await link.stop()


async def test_revocation_after_start_takes_effect_on_sighup(setup: Setup) -> None:
    assert await connects(setup, "pi-b")
    setup.pki.ca.revoke(setup.serials["pi-b"], "superseded", setup.pki.now)
    setup.pki.write_crl()
    setup.broker.hup()
    await asyncio.sleep(0.5)
    assert not await connects(setup, "pi-b")
    assert await connects(setup, "pi-a")


async def test_pattern_acl_confines_the_device_id_but_not_the_site(pattern_setup: Setup) -> None:
    """The `pattern` form with `+` for the site: what Mosquitto 2.0.11 enforces."""
    s = pattern_setup
    other_site_a = topic("site-2", "pi-a", Channel.TOKENS)
    async with (
        client(s, AGG, [ALL_TOKENS]) as (_agg, agg_in),
        client(s, "pi-a", [B_COMMANDS, A_COMMANDS]) as (pi_a, _a_in),
    ):
        await publish_until_seen(pi_a, A_TOKENS, agg_in)
        assert await pi_a.publish(B_TOKENS, b"forged")
        assert await pi_a.publish(other_site_a, b"other site")
        assert await pi_a.publish(A_TOKENS, b"after")
        got = [await asyncio.wait_for(agg_in.get(), 5.0) for _ in range(2)]
        # another device's topic is refused; its own id under another site is NOT
        assert got == [(other_site_a, b"other site"), (A_TOKENS, b"after")]


async def test_aggregator_may_use_a_shared_subscription(setup: Setup) -> None:
    """The ACL check of `$share/<group>/<filter>` applies to the filter (as cloud/runtime uses)."""
    async with (
        client(setup, AGG, ["$share/aggregators/" + ALL_TOKENS]) as (_agg, agg_in),
        client(setup, "pi-a") as (pi_a, _),
    ):
        await publish_until_seen(pi_a, A_TOKENS, agg_in)


async def test_enrollment_regenerates_the_acl_and_sighup_applies_it(setup: Setup) -> None:
    setup.pki.device("pi-c", "site-3")
    c_tokens = topic("site-3", "pi-c", Channel.TOKENS)
    async with (
        client(setup, AGG, [ALL_TOKENS]) as (_agg, agg_in),
        client(setup, "pi-a") as (pi_a, _),
    ):
        await publish_until_seen(pi_a, A_TOKENS, agg_in)
        async with client(setup, "pi-c") as (pi_c, _):  # a valid certificate, not in the ACL
            assert await pi_c.publish(c_tokens, b"too early")
        assert await pi_a.publish(A_TOKENS, b"after")
        assert await asyncio.wait_for(agg_in.get(), 5.0) == (A_TOKENS, b"after")
        assert drain(agg_in) == []
        devices = [("site-1", "pi-a"), ("site-2", "pi-b"), ("site-3", "pi-c")]
        setup.acl_path.write_text(render_acl(AGG, devices))
        setup.broker.hup()
        async with client(setup, "pi-c") as (pi_c, _):
            await publish_until_seen(pi_c, c_tokens, agg_in)
