"""Field faults against a real agent: simulated meters over Modbus TCP, a real SQLite outbox.

A manual clock steps the agent and the simulators together through restarts, counter resets,
meters that stop answering, clock jumps and an unsynchronised clock. Whatever happens, the minted
tokens form one unbroken chain, no interval is minted twice, and no token holds more energy than
the meter really produced.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.accounting import Channel
from edge.agent import EdgeAgent
from edge.drivers.register_map import find_register_map, load_register_map
from edge.meters import make_reader
from edge.outbox import Outbox
from edge.settings import EdgeSettings, MeterSettings
from protocol import cose
from protocol.clock import ManualClock
from protocol.record import IntervalRecord, TimeQuality
from simulators.modbus_meter import SimulatedMeter, start_meter_server

pytestmark = [pytest.mark.modbus]

T0 = int(datetime(2026, 6, 21, 11, 0, tzinfo=UTC).timestamp())  # sunny noon, aligned
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@dataclass
class Rig:
    clock: ManualClock
    meter: SimulatedMeter
    server: object
    settings: EdgeSettings
    synced: list[bool]

    def true_generation_wh(self) -> float:
        return self.meter.energy_kwh()[1] * 1000

    async def agent(self) -> tuple[EdgeAgent, Outbox]:
        outbox = await Outbox.open(self.settings.state_db)
        agent = EdgeAgent(
            self.settings, KEY, self.clock, [make_reader(m) for m in self.settings.meters],
            outbox,
            clock_check=lambda: (
                TimeQuality.SYNCHRONIZED if self.synced[0] else TimeQuality.UNKNOWN, ("ntp", 0)
            ),
        )
        await agent.resume()
        return agent, outbox


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = ManualClock(T0 - 30)
    rmap = load_register_map(find_register_map("eastron/sdm630"))
    meter = SimulatedMeter(rmap, role="pv", clock=clock, capacity_w=5000, seed=7)
    server = await start_meter_server({1: meter}, port=0)
    settings = EdgeSettings(
        device_id="pi-faults", site_id="site-f", deployment="gridmint-test",
        key_file=tmp_path / "k", state_db=tmp_path / "edge.sqlite", capacity_w=5000,
        meters=[MeterSettings(name="pv", register_map="eastron/sdm630", port=server.port,
                              timeout_s=0.3, channels={Channel.GENERATED: "export_energy"},
                              serial="SIM-1")],
    )
    try:
        yield Rig(clock, meter, server, settings, [True])
    finally:
        await server.stop()


async def tokens(outbox: Outbox) -> list[IntervalRecord]:
    rows = await outbox.due(now_ms=2**62, resend_after_ms=0, limit=10_000)
    out = []
    for row in rows:
        s1, rec = cose.open_record(row.envelope)
        cose.verify(s1, cose.public_bytes(KEY.public_key()), b"gridmint-test")
        out.append(rec)
    return out


async def step(agent: EdgeAgent, clock: ManualClock, to: float) -> None:
    clock.set(to)
    await agent.sample_once()


async def until_available(agent: EdgeAgent) -> None:
    """Poll (same clock time, real seconds passing) until the driver's back-off has ended."""
    for _ in range(40):
        await agent.sample_once()
        if not agent.stats.meters_unavailable:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"meters still unavailable: {agent.stats.meters_unavailable}")


def assert_one_chain(recs: list[IntervalRecord]) -> None:
    assert [r.seq for r in recs] == list(range(1, len(recs) + 1))
    starts = [r.interval_start for r in recs]
    assert len(set(starts)) == len(starts), "an interval was minted twice"
    assert starts == sorted(starts)
    for a, b in zip(recs, recs[1:], strict=False):
        assert b.prev_hash != a.prev_hash


async def test_restart_mid_interval_resumes_and_never_mints_twice(rig: Rig) -> None:
    agent, outbox = await rig.agent()
    await step(agent, rig.clock, T0 + 1)
    start_wh = rig.true_generation_wh()  # the baseline reading
    await step(agent, rig.clock, T0 + 301)
    await step(agent, rig.clock, T0 + 450)  # mid-interval ...
    await outbox.close()  # ... the agent dies (power cut: nothing else is written)

    agent, outbox = await rig.agent()
    await step(agent, rig.clock, T0 + 450)  # restarted in the same interval
    await step(agent, rig.clock, T0 + 601)
    await step(agent, rig.clock, T0 + 901)
    recs = await tokens(outbox)
    assert [r.interval_start for r in recs] == [T0, T0 + 300, T0 + 600]
    assert_one_chain(recs)
    assert [r.boot for r in recs] == [1, 2, 2]
    assert all(r.status == "G" for r in recs)
    minted = sum(r.energy.generated_wh for r in recs)
    # Counter rise between the first and last boundary readings, to whole-Wh rounding.
    assert abs(minted - (rig.true_generation_wh() - start_wh)) <= 3
    assert min(r.energy.generated_wh for r in recs) > 100  # June noon, 5 kW: real energy
    await outbox.close()


async def test_counter_reset_is_flagged_and_never_inflates(rig: Rig) -> None:
    agent, outbox = await rig.agent()
    await step(agent, rig.clock, T0 + 1)
    before = rig.true_generation_wh()
    await step(agent, rig.clock, T0 + 100)
    before_reset = rig.true_generation_wh()
    rig.meter.reset_counters(import_kwh=0.0, export_kwh=0.0)  # meter reset mid-interval
    await step(agent, rig.clock, T0 + 150)
    await step(agent, rig.clock, T0 + 200)
    await step(agent, rig.clock, T0 + 301)
    await step(agent, rig.clock, T0 + 601)
    recs = await tokens(outbox)
    assert_one_chain(recs)
    assert "R" in recs[0].status
    assert recs[1].status == "G"
    # Real production: T0+1..T0+100 on the old count, then everything since the reset (the
    # meter counts from 0). The reading between the reset and the next poll is the only loss.
    produced = (before_reset - before) + rig.true_generation_wh()
    minted = sum(r.energy.generated_wh for r in recs)
    assert minted <= produced + 2
    assert minted >= produced - 5000 * 50 / 3600 - 2  # at most the 50 s until the next poll
    assert recs[0].energy.generated_wh > 0
    await outbox.close()


async def test_meter_that_stops_answering_loses_nothing_once_it_is_back(rig: Rig) -> None:
    agent, outbox = await rig.agent()
    await step(agent, rig.clock, T0 + 1)
    start_wh = rig.true_generation_wh()  # the baseline reading
    rig.meter.fail_next(50, "timeout")  # rebooting meter: silent across a boundary
    await step(agent, rig.clock, T0 + 301)
    assert "pv" in agent.stats.meters_unavailable
    assert "no response" in agent.stats.meters_unavailable["pv"]
    rig.meter._faults.clear()  # the reboot is over
    rig.clock.set(T0 + 601)
    await until_available(agent)
    assert agent.stats.meters_unavailable == {}
    recs = await tokens(outbox)
    assert_one_chain(recs)
    # No reading at T0+300: that interval is not invented; its energy is booked, flagged, on
    # the interval closed by the first reading after the meter came back.
    assert [r.interval_start for r in recs] == [T0 + 300]
    assert "GAP" in recs[0].status
    minted = sum(r.energy.generated_wh for r in recs)
    assert abs(minted - (rig.true_generation_wh() - start_wh)) <= 3
    await outbox.close()


async def test_clock_jumping_back_mints_no_interval_twice(rig: Rig) -> None:
    agent, outbox = await rig.agent()
    await step(agent, rig.clock, T0 + 1)
    await step(agent, rig.clock, T0 + 301)
    await step(agent, rig.clock, T0 + 601)
    await step(agent, rig.clock, T0 - 600)  # NTP steps the clock back 20 minutes
    await step(agent, rig.clock, T0 + 302)
    await step(agent, rig.clock, T0 + 901)
    recs = await tokens(outbox)
    assert_one_chain(recs)
    assert [r.interval_start for r in recs] == [T0, T0 + 300, T0 + 600]
    assert "CLOCK" in recs[-1].status
    await outbox.close()


async def test_unsynchronised_clock_holds_minting_until_synchronised(rig: Rig) -> None:
    agent, outbox = await rig.agent()
    await step(agent, rig.clock, T0 + 1)
    start_wh = rig.true_generation_wh()  # the baseline reading
    rig.synced[0] = False  # after boot, before NTP
    await step(agent, rig.clock, T0 + 301)
    await step(agent, rig.clock, T0 + 601)
    assert await tokens(outbox) == []
    assert agent.stats.held_unsynced == 2
    rig.synced[0] = True
    await step(agent, rig.clock, T0 + 901)
    recs = await tokens(outbox)
    assert len(recs) == 1
    assert recs[0].interval_start == T0 + 600
    assert "GAP" in recs[0].status
    assert recs[0].quality.name == "ESTIMATED"
    assert recs[0].time_quality is TimeQuality.SYNCHRONIZED
    assert abs(recs[0].energy.generated_wh - (rig.true_generation_wh() - start_wh)) <= 3
    await outbox.close()


async def test_adapter_loss_and_return(rig: Rig, tmp_path: Path) -> None:
    agent, outbox = await rig.agent()
    await step(agent, rig.clock, T0 + 1)
    start_wh = rig.true_generation_wh()  # the baseline reading
    port = rig.server.port  # type: ignore[attr-defined]
    await rig.server.stop()  # type: ignore[attr-defined]
    await step(agent, rig.clock, T0 + 301)
    assert "pv" in agent.stats.meters_unavailable
    rig.server = await start_meter_server({1: rig.meter}, port=port)
    rig.clock.set(T0 + 601)
    await until_available(agent)
    assert agent.stats.meters_unavailable == {}
    recs = await tokens(outbox)
    assert_one_chain(recs)
    minted = sum(r.energy.generated_wh for r in recs)
    assert abs(minted - (rig.true_generation_wh() - start_wh)) <= 3
    await outbox.close()
