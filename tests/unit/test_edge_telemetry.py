"""The agent's live telemetry record (protocol/telemetry.py) from configured meter flows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.agent import EdgeAgent
from edge.meters import make_reader
from edge.outbox import Outbox
from edge.settings import EdgeSettings, MeterSettings
from protocol import telemetry as tele
from protocol.clock import ManualClock
from protocol.record import TimeQuality

SYNCED = (TimeQuality.SYNCHRONIZED, ("ntp", 0))
UNKNOWN = (TimeQuality.UNKNOWN, ("none", 0))


def _meter(name: str, flows: dict[str, str]) -> MeterSettings:
    return MeterSettings(name=name, register_map="eastron/sdm630", flows=flows)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "edge.sqlite")
    yield box
    await box.close()


def _agent(outbox: Outbox, tmp_path: Path, meters: list[MeterSettings], quality=SYNCED):  # type: ignore[no-untyped-def]
    settings = EdgeSettings(
        device_id="pi-t",
        site_id="s",
        key_file=tmp_path / "k",
        state_db=tmp_path / "db",
        meters=meters,
    )
    readers = [make_reader(m) for m in meters]
    return EdgeAgent(
        settings,
        Ed25519PrivateKey.generate(),
        ManualClock(1_800_000_000),
        readers,
        outbox,
        clock_check=lambda: quality,
    )


async def test_flows_are_summed_negated_and_clamped(outbox: Outbox, tmp_path: Path) -> None:
    agent = _agent(
        outbox,
        tmp_path,
        [
            _meter("pv1", {"pv": "-total_power"}),
            _meter("pv2", {"pv": "-total_power"}),
            _meter("grid", {"grid": "total_power"}),
        ],
    )
    values = {
        "pv1": {"total_power": -1500.4},
        "pv2": {"total_power": -700.3},
        "grid": {"total_power": -321.6},
    }
    t = agent.telemetry(values, 1_800_000_000_123, waiting=4)
    assert (t.pv_w, t.grid_w, t.battery_w) == (2201, -322, None)
    assert t.backlog == 4 and t.at_ms == 1_800_000_000_123 and t.device_id == "pi-t"
    assert t.health is tele.Health.OK and t.seq == 0
    assert tele.decode(tele.encode(t)) == t
    # Night: the inverters draw a little (import-positive on a PV meter): reported as 0.
    night = agent.telemetry({"pv1": {"total_power": 5.0}, "pv2": {"total_power": 3.0}}, 1, 0)
    assert night.pv_w == 0 and night.grid_w is None  # the grid meter gave nothing this time
    assert night.seq == 1


async def test_a_flow_nobody_measures_is_none(outbox: Outbox, tmp_path: Path) -> None:
    agent = _agent(outbox, tmp_path, [_meter("m", {})])
    t = agent.telemetry({"m": {"total_power": 100.0}}, 1, 0)
    assert (t.pv_w, t.battery_w, t.grid_w) == (None, None, None)
    agent = _agent(outbox, tmp_path, [_meter("m", {"grid": "total_power"})])
    assert agent.telemetry({"m": {"total_power": float("nan")}}, 1, 0).grid_w is None


async def test_health_flags(outbox: Outbox, tmp_path: Path) -> None:
    agent = _agent(outbox, tmp_path, [_meter("a", {}), _meter("b", {})], UNKNOWN)
    assert agent.telemetry({}, 1, 0).health is tele.Health.CLOCK_UNSYNCHRONISED
    agent.stats.meters_unavailable = {"a": "timeout"}
    assert not agent.telemetry({}, 1, 0).health & tele.Health.FAULT  # one of two is down
    agent.stats.meters_unavailable["b"] = "timeout"
    assert agent.telemetry({}, 1, 0).health == tele.Health.FAULT | tele.Health.CLOCK_UNSYNCHRONISED
    agent.stats.meters_unavailable.clear()
    agent.stats.storage_alarm = "disk full"
    assert agent.telemetry({}, 1, 0).health & tele.Health.FAULT


def test_a_flow_must_name_a_power_quantity_of_the_meter() -> None:
    with pytest.raises(ValueError, match="no quantity 'nonsense' for flow pv"):
        make_reader(_meter("m", {"pv": "-nonsense"}))
    with pytest.raises(ValueError, match="import_energy is in kWh, not W"):
        make_reader(_meter("m", {"grid": "import_energy"}))
