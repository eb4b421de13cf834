"""The installer's whole journey against real parts.

A TLS Mosquitto configured by `gridmint cloud pki`, the aggregator started from the environment
file it wrote (device CA, ACL, CRL, SIGHUP), a grid meter on an RS-485 pty bus and a SunSpec
inverter on Modbus TCP. The installer runs the real commands as subprocesses: scan --write,
enroll; an approver approves over the API; the commissioning check passes; the agent publishes
over mutual TLS and its tokens count. Revoking the device then locks it out of the broker.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.broker_setup import BrokerFiles, setup_broker
from cloud.runtime import CloudRuntime
from cloud.settings import CloudSettings
from cloud.storage.accounts import AccountStore
from edge.agent import EdgeAgent
from edge.clocksync import ClockStatus, read_clock_status
from edge.drivers.register_map import find_register_map, load_register_map
from edge.keys import load_key_file
from edge.meters import make_reader
from edge.outbox import Outbox
from edge.settings import load_settings
from edge.transports.modbus_bus import close_buses
from mqttlink import BrokerAddress, MqttLink, Subscription, client_tls_context
from protocol import topics
from protocol.checkpoint import parse_signed_checkpoint, parse_verifier_key
from protocol.clock import SimClock
from provisioning.check import run_check
from provisioning.enroll import set_top_level
from simulators.modbus_device import SimulatedDevice, start_rtu_server
from simulators.pty import PtyPair
from simulators.sunspec_device import SimulatedSunSpec, start_sunspec_tcp_server
from tests.helpers.services import ConfiguredMosquitto, free_port

pytestmark = [pytest.mark.broker, pytest.mark.serial, pytest.mark.modbus, pytest.mark.slow]

DEPLOYMENT = "gridmint-journey"


def synced() -> ClockStatus:
    # The machine's NTP state is not ours to set; the agent and check read it through this.
    return ClockStatus(True, "timedatectl", 12)


async def gridmint(*args: str, timeout_s: float = 120) -> tuple[int, str, str]:
    """Run the real `gridmint` command line while this event loop keeps serving."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gridmint",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def until(pred: Any, timeout_s: float = 30.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout_s
    while not await pred():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not met within {timeout_s} s")
        await asyncio.sleep(0.1)


@pytest.fixture
async def tls_cloud(tmp_path: Path) -> AsyncIterator[tuple[CloudRuntime, BrokerFiles]]:
    files = setup_broker(
        tmp_path / "broker",
        hosts=["127.0.0.1", "localhost"],
        port=free_port(),
        now=datetime.now(UTC),
        run_as_user="root" if os.geteuid() == 0 else None,
    )
    broker = ConfiguredMosquitto(files.mosquitto_conf, files.port)
    broker.start()
    settings = CloudSettings(
        _env_file=files.env_file,  # type: ignore[call-arg]
        database_url=f"sqlite:///{tmp_path / 'cloud.sqlite'}",
        deployment=DEPLOYMENT,
        http_port=0,
        ledger_grace_s=0,  # the simulated intervals are already in the past
        ledger_close_every_s=0.2,
    )
    runtime = CloudRuntime(settings)
    await runtime.start()
    try:
        yield runtime, files
    finally:
        await runtime.stop()
        broker.stop()


async def test_scan_enroll_approve_check_and_tokens_count(
    tls_cloud: tuple[CloudRuntime, BrokerFiles], tmp_path: Path
) -> None:
    cloud, files = tls_cloud
    assert cloud.store is not None and cloud.mqtt is not None and cloud.credentials is not None
    await until(
        lambda: asyncio.sleep(0, cloud.mqtt is not None and cloud.mqtt.link.ready.is_set()),
        10,
        "aggregator connected and subscribed over mutual TLS",
    )

    # People: a homeowner with a site, an installer, an approver.
    accounts = AccountStore(cloud.store.engine)
    token: dict[str, str] = {}
    ids: dict[str, str] = {}
    for role in ("homeowner", "installer", "approver"):
        a = await accounts.create_account(
            f"{role}@example.org", role, "a long password", role, "approved"
        )
        ids[role], token[role] = a.account_id, await accounts.issue_token(a.account_id, 3600)

    def as_(role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token[role]}"}

    async with httpx.AsyncClient(base_url=cloud.url, timeout=10) as api:
        r = await api.post(
            "/api/v1/sites",
            headers=as_("installer"),
            json={
                "site_id": "site-journey",
                "owner_account_id": ids["homeowner"],
                "name": "Journey",
            },
        )
        assert r.status_code == 201, r.text
        r = await api.post("/api/v1/sites/site-journey/claim-codes", headers=as_("installer"))
        assert r.status_code == 201, r.text
        claim = r.json()["code"]

        # The site: a grid meter on RS-485 and an inverter on the LAN, on one simulated clock
        # that runs at 200x (a 5-minute interval every 1.5 s) from the last 11:00 UTC, so the
        # sun shines and the intervals are in the past (within the backfill window).
        noon = datetime.now(UTC).replace(hour=11, minute=0, second=0, microsecond=0)
        if noon.timestamp() > time.time() - 600:
            noon -= timedelta(days=1)
        clock = SimClock.starting_at(noon.timestamp(), 200.0)
        bus = PtyPair(tmp_path, "rs485").open()
        sdm = SimulatedDevice(
            load_register_map(find_register_map("eastron/sdm630")), "grid_meter", clock, seed=5
        )
        rtu = await start_rtu_server({1: sdm}, bus.sim_path, 9600)
        inverter = SimulatedSunSpec(clock, seed=6, jitter=False)
        tcp = await start_sunspec_tcp_server({1: inverter}, port=0)
        cfg = tmp_path / "pi" / "edge.toml"
        readers: list[Any] = []
        outbox: Outbox | None = None
        try:
            # 1. scan --write: both devices found and written to a new config.
            rc, out, err = await gridmint(
                "provision",
                "scan",
                "--port",
                str(bus.device_path),
                "--host",
                f"127.0.0.1:{tcp.port}",
                "--bauds",
                "9600",
                "--units",
                "1",
                "--sunspec-units",
                "",
                "--tcp-units",
                "1",
                "--tcp-timeout",
                "1",
                "--no-vedirect",
                "--write",
                str(cfg),
            )
            assert rc == 0, err
            assert "2 device(s) found" in err, err

            # 2. enroll with the claim code: keys made here, certificate from the cloud's CA.
            rc, out, err = await gridmint(
                "provision",
                "enroll",
                "--cloud",
                cloud.url,
                "--claim",
                claim,
                "--config",
                str(cfg),
                "--device-id",
                "pi-journey",
                "--capacity-w",
                "8000",
            )
            assert rc == 0, err
            assert "enrolled as pi-journey at site site-journey (pending)" in out
            folder = cfg.parent
            for secret in ("device.key", "tls.key"):
                assert (folder / secret).stat().st_mode & 0o777 == 0o600, secret
            assert 'ledger_key = "gridmint/gridmint-journey/ledger+' in cfg.read_text()
            cfg.write_text(set_top_level(cfg.read_text(), {"proof_check_interval_s": 1}))
            settings = load_settings(cfg)
            assert settings.broker_url == f"mqtts://127.0.0.1:{files.port}"
            assert (settings.device_id, settings.site_id) == ("pi-journey", "site-journey")
            assert {m.driver for m in settings.meters} == {"modbus", "sunspec"}
            # The broker was told: the pending device is in the ACL, and it was reloaded.
            assert "user pi-journey" in files.acl.read_text()
            assert cloud.credentials.reloads >= 1
            # A second enrollment with the same code is refused in plain words.
            rc, _, err = await gridmint(
                "provision",
                "enroll",
                "--cloud",
                cloud.url,
                "--claim",
                claim,
                "--config",
                str(tmp_path / "other.toml"),
                "--capacity-w",
                "100",
            )
            assert rc == 1
            assert "already used" in err and "Traceback" not in err

            # 3. check while pending: passes with a warning that tokens wait for approval.
            report = await run_check(cfg, clock_status=synced)
            verdicts = {c.name: c.verdict for c in report.checks}
            assert report.passed, report.checks
            assert verdicts["broker"] == "ok" and verdicts["cloud"] == "warn"
            assert sum(v == "ok" for n, v in verdicts.items() if n.startswith("meter")) == 2

            # The real command reads this machine's clock state; it fails if and only if the
            # clock is not synchronised, and says so.
            rc, out, err = await gridmint("provision", "check", "--config", str(cfg))
            if read_clock_status().synchronized:
                assert rc == 0, out + err
            else:
                assert rc == 1
                assert "clock: not synchronised" in " ".join(err.split()), err

            # 4. the approver approves; the check now reports the device approved.
            r = await api.post(
                "/api/v1/admin/devices/pi-journey/status",
                headers=as_("approver"),
                json={"status": "approved", "reason": "wiring checked"},
            )
            assert r.status_code == 200, r.text
            report = await run_check(cfg, clock_status=synced)
            assert report.passed
            assert {c.name: c.verdict for c in report.checks}["cloud"] == "ok"

            # 5. the agent runs: tokens flow over mutual TLS and count.
            outbox = await Outbox.open(settings.state_db)
            readers = [make_reader(m) for m in settings.meters]
            agent = EdgeAgent(settings, load_key_file(settings.key_file), clock, readers, outbox)
            stop = asyncio.Event()
            task = asyncio.create_task(agent.run(stop))

            async def counted() -> bool:
                assert cloud.store is not None
                return (await cloud.store.stats()).accepted >= 2

            await until(counted, 40, "two tokens accepted")

            # 6. the Pi checks the ledger: its tokens are in the signed log, proven on the Pi.
            async def proven() -> bool:
                return agent.stats.proofs_verified >= 2

            await until(proven, 40, "two inclusion proofs verified on the Pi")
            assert agent.stats.proof_failures == 0
            counts = await outbox.proof_counts()
            assert counts["proven"] >= 2 and counts["failed"] == 0
            assert (await outbox.load_tree_head()) is not None
            # The signed checkpoint is also retained on the broker, readable by the device.
            notes: asyncio.Queue[bytes] = asyncio.Queue()

            async def on_note(_t: str, payload: bytes) -> None:
                notes.put_nowait(payload)

            assert settings.tls_ca_file is not None
            reader = MqttLink(
                BrokerAddress.parse(settings.broker_url),
                "pi-journey-checkpoint-reader",
                clean_session=True,
                subscriptions=[Subscription(topics.LEDGER_CHECKPOINT, on_note)],
                tls_context=client_tls_context(
                    settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file
                ),
            )
            await reader.start()
            try:
                note = await asyncio.wait_for(notes.get(), 10)
            finally:
                await reader.stop()
            pinned = parse_verifier_key(settings.ledger_key)
            cp = parse_signed_checkpoint(note, pinned.name, pinned.public_key, origin=pinned.name)
            assert cp.size >= 1
            stop.set()
            await asyncio.wait_for(task, 15)
            stats = await cloud.store.stats()
            assert stats.held == 0 and stats.generated_wh > 0
            r = await api.get("/api/v1/tokens", headers=as_("homeowner"))
            assert {t["device_id"] for t in r.json()} == {"pi-journey"}

            # 7. revocation reaches the broker: the device's certificate is refused.
            r = await api.post(
                "/api/v1/admin/devices/pi-journey/status",
                headers=as_("approver"),
                json={"status": "revoked", "reason": "Pi stolen"},
            )
            assert r.status_code == 200, r.text
            await asyncio.sleep(0.5)  # Mosquitto re-reads the CRL on SIGHUP
            report = await run_check(cfg, clock_status=synced, timeout_s=2)
            verdicts = {c.name: c.verdict for c in report.checks}
            assert verdicts["broker"] == "fail" and verdicts["cloud"] == "fail"
            assert not report.passed
        finally:
            for reader in readers:
                await reader.close()
            await close_buses()
            if outbox is not None:
                await outbox.close()
            await tcp.stop()
            await rtu.stop()
            bus.close()
