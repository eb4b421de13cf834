"""The edge agent as a whole: telemetry, retained status with last-will, LED, over real parts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gpiozero.pins.mock import MockFactory

from edge.accounting import Channel
from edge.agent import EdgeAgent
from edge.drivers.register_map import find_register_map, load_register_map
from edge.gpio import AgentLedState, StatusPanel
from edge.meters import make_reader
from edge.outbox import Outbox
from edge.settings import EdgeSettings, MeterSettings
from mqttlink import BrokerAddress, MqttLink, Subscription
from protocol import telemetry as tele
from protocol import topics
from protocol.clock import SimClock
from simulators.modbus_meter import MeterServer, SimulatedMeter, start_meter_server
from tests.helpers.services import Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.modbus]


@pytest.fixture
async def meters() -> AsyncIterator[MeterServer]:
    rmap = load_register_map(find_register_map("eastron/sdm630"))
    # Real time, but a June noon's: the PV meter has something to report whatever the hour.
    clock = SimClock.starting_at(1_782_039_600, 1.0)
    server = await start_meter_server(
        {1: SimulatedMeter(rmap, "pv", clock, seed=3), 2: SimulatedMeter(rmap, "grid", clock)},
        port=0,
    )
    try:
        yield server
    finally:
        await server.stop()


async def _until(pred, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_telemetry_status_and_last_will_through_mosquitto(
    mosquitto: Mosquitto, meters: MeterServer, tmp_path: Path
) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f"""
device_id = "pi-tele"
site_id = "site-tele"
key_file = "device.key"
state_db = "edge.sqlite"
broker_url = "{mosquitto.url}"
telemetry_interval_s = 0.5

[[meters]]
name = "pv"
register_map = "eastron/sdm630"
port = {meters.port}
unit_id = 1
channels = {{ generated = "export_energy" }}
flows = {{ pv = "-total_power" }}

[[meters]]
name = "grid"
register_map = "eastron/sdm630"
port = {meters.port}
unit_id = 2
channels = {{ imported = "import_energy", exported = "export_energy" }}
flows = {{ grid = "total_power" }}
""")
    telemetry: list[tele.Telemetry] = []
    statuses: list[dict] = []  # type: ignore[type-arg]

    async def on_tele(_t: str, p: bytes) -> None:
        telemetry.append(tele.decode(p))  # strict: canonical CBOR or it raises

    async def on_status(_t: str, p: bytes) -> None:
        statuses.append(json.loads(p))

    watcher = MqttLink(
        BrokerAddress.parse(mosquitto.url),
        "watcher",
        clean_session=True,
        subscriptions=[
            Subscription(
                topics.topic("site-tele", "pi-tele", topics.Channel.TELEMETRY), on_tele, qos=0
            ),
            Subscription(topics.topic("site-tele", "pi-tele", topics.Channel.STATUS), on_status),
        ],
    )
    await watcher.start()
    assert await watcher.wait_ready(10)
    agent = subprocess.Popen(  # the real command, as systemd would run it
        [sys.executable, "-m", "gridmint", "edge", "run", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        await _until(lambda: len(telemetry) >= 3)
        live = telemetry[-1]
        assert live.device_id == "pi-tele" and live.boot >= 1
        assert [t.seq for t in telemetry] == list(range(len(telemetry)))  # one run, in order
        # The simulator's model at the sample's time (its meters add 1 % / 5 % jitter).
        sim = meters.meters[1].clock
        assert isinstance(sim, SimClock)
        ts = live.at_ms / 1000 + sim.origin_sim - sim.origin_real  # the agent's clock is real
        pv_model = meters.meters[1].home.pv_w(ts)
        grid_model = meters.meters[2].net_power_w(ts)  # load - pv of the grid meter's home
        assert live.pv_w is not None and live.pv_w > 1000  # noon: generating, sign right
        assert live.pv_w == pytest.approx(pv_model, rel=0.1, abs=20)
        assert live.grid_w is not None
        assert live.grid_w == pytest.approx(grid_model, rel=0.25, abs=50)
        assert live.battery_w is None and live.soc_permille is None  # no meter measures them
        assert not live.health & tele.Health.FAULT
        assert live.backlog >= 0
        await _until(lambda: any(s["state"] == "online" for s in statuses))
        agent.send_signal(signal.SIGKILL)  # power cut: no goodbye, the broker sends the will
        agent.wait(10)
        await _until(lambda: statuses[-1] == {"state": "offline"}, 30)
        # The status is retained: a newcomer learns it at once.
        late: list[bytes] = []

        async def on_late(_t: str, p: bytes) -> None:
            late.append(p)

        newcomer = MqttLink(
            BrokerAddress.parse(mosquitto.url),
            "newcomer",
            clean_session=True,
            subscriptions=[
                Subscription(topics.topic("site-tele", "pi-tele", topics.Channel.STATUS), on_late)
            ],
        )
        await newcomer.start()
        await _until(lambda: late != [])
        assert json.loads(late[0]) == {"state": "offline"}
        await newcomer.stop()
    finally:
        if agent.poll() is None:
            agent.kill()
        await watcher.stop()


async def test_led_shows_buffering_while_tokens_wait_for_a_broker(
    mosquitto: Mosquitto, meters: MeterServer, tmp_path: Path
) -> None:
    settings = EdgeSettings(
        device_id="pi-led",
        site_id="site-led",
        key_file=tmp_path / "k",
        state_db=tmp_path / "edge.sqlite",
        broker_url="mqtt://127.0.0.1:1",
        telemetry_interval_s=0.5,
        meters=[
            MeterSettings(
                name="pv",
                register_map="eastron/sdm630",
                port=meters.port,
                channels={Channel.GENERATED: "export_energy"},
            )
        ],
    )
    factory = MockFactory()
    panel = StatusPanel(17, 27, {"boiler": 22}, pin_factory=factory)
    outbox = await Outbox.open(settings.state_db)
    clock = SimClock.starting_at(1_782_039_600, 300)  # June noon, 5 min = 1 s
    agent = EdgeAgent(
        settings,
        Ed25519PrivateKey.generate(),
        clock,
        [make_reader(m) for m in settings.meters],
        outbox,
        panel=panel,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        # No broker at port 1: tokens pile up in the outbox, the LED says "buffering".
        await _until(lambda: panel.state is AgentLedState.BUFFERING, 15)
        assert agent.stats.meters_unavailable == {}
        assert agent.healthy()
    finally:
        stop.set()
        await task
        await outbox.close()
    assert factory.pin(22).state == 0  # relay released on shutdown
