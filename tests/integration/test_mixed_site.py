"""One agent, every kind of device, configured as an installer would and read as the agent does.

An RS-485 line (pty) with an SDM630 grid meter (unit 1) and an EPEver charge controller (unit 2),
a SunSpec inverter on Modbus TCP, and a Victron MPPT on VE.Direct (pty). The agent's settings go
through the same TOML loader and driver factory as `gridmint edge run`; two boundary readings
mint one token whose channels match the simulators' counters.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.agent import EdgeAgent
from edge.drivers.register_map import find_register_map, load_register_map
from edge.meters import make_reader
from edge.outbox import Outbox
from edge.settings import load_settings
from edge.transports.modbus_bus import close_buses
from protocol import cose
from protocol.clock import ManualClock
from protocol.record import TimeQuality
from simulators.modbus_device import SimulatedDevice, start_rtu_server
from simulators.pty import PtyPair
from simulators.sunspec_device import SimulatedSunSpec, start_sunspec_tcp_server
from simulators.vedirect_device import SimulatedMppt

pytestmark = [pytest.mark.serial, pytest.mark.modbus, pytest.mark.slow]

T0 = int(datetime(2026, 6, 21, 11, 0, tzinfo=UTC).timestamp())


async def test_mixed_site_mints_from_every_driver(tmp_path: Path) -> None:
    clock = ManualClock(T0 + 1)
    bus = PtyPair(tmp_path, "rs485").open()
    ve_pty = PtyPair(tmp_path, "vedirect").open()
    sdm = SimulatedDevice(
        load_register_map(find_register_map("eastron/sdm630")), "grid_meter", clock, seed=1
    )
    epever = SimulatedDevice(
        load_register_map(find_register_map("epever/tracer-an")), "charge_controller", clock, seed=2
    )
    rtu = await start_rtu_server({1: sdm, 2: epever}, bus.sim_path, baudrate=9600)
    inverter = SimulatedSunSpec(clock, seed=3, jitter=False)
    sunspec = await start_sunspec_tcp_server({1: inverter}, port=0)
    mppt = SimulatedMppt(clock, capacity_w=600, seed=4, port_path=ve_pty.sim_path, interval_s=0.2)
    await mppt.start()
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f"""
device_id = "pi-mixed"
site_id = "site-mixed"
deployment = "gridmint-test"
key_file = "device.key"
state_db = "edge.sqlite"
capacity_w = 8000

[[meters]]
name = "grid"
register_map = "eastron/sdm630"
transport = "rtu"
serial_port = "{bus.device_path}"
unit_id = 1
timeout_s = 0.5
channels = {{ imported = "import_energy", exported = "export_energy" }}

[[meters]]
name = "mppt"
register_map = "epever/tracer-an"
transport = "rtu"
serial_port = "{bus.device_path}"
baudrate = 9600
unit_id = 2
timeout_s = 0.5
channels = {{ charged = "generated_energy" }}
soc = "battery_soc"

[[meters]]
name = "inverter"
driver = "sunspec"
port = {sunspec.port}
unit_id = 1
channels = {{ generated = "ac_energy_wh" }}

[[meters]]
name = "victron"
driver = "vedirect"
serial_port = "{ve_pty.device_path}"
timeout_s = 3.0
channels = {{ discharged = "yield_total_wh" }}
""")
    settings = load_settings(cfg)
    key = Ed25519PrivateKey.generate()
    outbox = await Outbox.open(settings.state_db)
    readers = [make_reader(m) for m in settings.meters]
    agent = EdgeAgent(
        settings,
        key,
        clock,
        readers,
        outbox,
        clock_check=lambda: (TimeQuality.SYNCHRONIZED, ("ntp", 1)),
    )
    try:
        await agent.resume()
        values = await agent.sample_once(all_values=True)  # baseline at T0+1
        assert agent.stats.meters_unavailable == {}, agent.stats.meters_unavailable
        assert set(values) == {"grid", "mppt", "inverter", "victron"}
        assert 0 <= values["mppt"]["battery_soc"] <= 100
        assert values["inverter"]["ac_power_w"] > 0
        start = {
            "imp": sdm.values_at(clock.now())["import_energy"],
            "gen": inverter.energy_wh()["ac_energy_wh"],
        }
        clock.set(T0 + 301)
        await agent.sample_once()
        assert agent.stats.meters_unavailable == {}, agent.stats.meters_unavailable
        rows = await outbox.due(now_ms=2**62, resend_after_ms=0)
        assert len(rows) == 1
        s1, rec = cose.open_record(rows[0].envelope)
        cose.verify(s1, cose.public_bytes(key.public_key()), b"gridmint-test")
        assert rec.interval_start == T0
        assert rec.status == "G"
        assert rec.soc_permille is not None
        # Generation comes from the SunSpec inverter's WH counter: compare with its own model.
        gen = inverter.energy_wh()["ac_energy_wh"] - start["gen"]
        assert rec.energy.generated_wh == pytest.approx(gen, abs=2)
        assert rec.energy.generated_wh > 50
        imp = (sdm.values_at(clock.now())["import_energy"] - start["imp"]) * 1000
        assert rec.energy.imported_wh == pytest.approx(imp, abs=2)
    finally:
        await outbox.close()
        for r in readers:
            await r.close()
        await close_buses()
        await mppt.stop()
        await sunspec.stop()
        await rtu.stop()
        ve_pty.close()
        bus.close()
