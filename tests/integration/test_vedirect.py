"""The VE.Direct driver reading the simulated MPPT through real socat pseudo-terminals.

Expected values come from the simulator's model at the time of the read (the block read was
made at most a few block intervals earlier) and, exactly, from the blocks the simulator logged
as sent; yield deltas are recomputed here by integrating the home model.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.drivers.modbus_generic import DeviceUnavailableError
from edge.drivers.vedirect import VeDirectDevice, decode_value, plain_values
from protocol.clock import SimClock
from simulators.models import EnergyIntegrator
from simulators.pty import PtyPair
from simulators.vedirect_device import EFFICIENCY, SentBlock, SimulatedMppt

pytestmark = pytest.mark.serial

# 21 June 2025, 10:00 UTC near Munich: the sun is well up.
ORIGIN = datetime(2025, 6, 21, 10, 0, tzinfo=UTC).timestamp()
SPEED = 60.0
INTERVAL_S = 0.2  # real devices send once a second; faster here to keep the tests short
TIMEOUT_S = 1.0


@dataclass
class Rig:
    folder: Path
    pair: PtyPair
    clock: SimClock
    sim: SimulatedMppt
    device: VeDirectDevice

    def replug(self) -> None:
        self.pair = PtyPair(self.folder, "ve").open()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    pair = PtyPair(tmp_path, "ve").open()
    clock = SimClock.starting_at(ORIGIN, SPEED)
    sim = SimulatedMppt(clock, capacity_w=1200, seed=5, interval_s=INTERVAL_S)
    await sim.start(pair.sim_path)
    device = VeDirectDevice(str(pair.device_path), timeout_s=TIMEOUT_S)
    r = Rig(tmp_path, pair, clock, sim, device)
    try:
        yield r
    finally:
        await device.close()
        await sim.stop()
        r.pair.close()


def plain(block: SentBlock) -> dict[str, float]:
    values = {label: decode_value(label, value) for label, value in block.fields.items()}
    return plain_values(values, list(READ_NAMES))


READ_NAMES = (
    "battery_voltage_v",
    "battery_current_a",
    "pv_voltage_v",
    "pv_power_w",
    "load_current_a",
    "yield_total_wh",
    "yield_today_wh",
)


def sent_block_for(
    sim: SimulatedMppt, values: dict[str, float], before: float | None = None
) -> SentBlock:
    """The newest block the simulator sent (before clock time `before`) with these values."""
    for block in reversed(sim.history):
        if before is not None and block.ts > before:
            continue
        if (
            block.sent
            and block.good
            and {k: v for k, v in plain(block).items() if k in values} == values
        ):
            return block
    raise AssertionError(f"no sent block carries {values}")


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 5.0, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_reads_the_model_through_a_real_pty(rig: Rig) -> None:
    values = await rig.device.read()
    t_read = rig.clock.now()
    assert set(values) == set(READ_NAMES)  # an MPPT has no state of charge
    # The block read was made at most a few intervals (in simulated time) before the read.
    lag = 4 * INTERVAL_S * SPEED
    samples = [rig.sim.model_values(t_read - lag * i / 20) for i in range(21)]
    for name in ("battery_voltage_v", "battery_current_a", "pv_power_w", "load_current_a"):
        lo = min(s[name] for s in samples)
        hi = max(s[name] for s in samples)
        assert lo - 0.01 * abs(lo) - 1.0 <= values[name] <= hi + 0.01 * abs(hi) + 1.0, name
    assert values["pv_power_w"] > 100  # mid-morning in June
    # Exactly one sent block carries these values, and it is recent.
    block = sent_block_for(rig.sim, values)
    assert t_read - lag <= block.ts <= t_read
    assert values["yield_total_wh"] == int(block.fields["H19"]) * 10
    assert rig.device.serial_number == "HQ2231SIM01"
    assert rig.device.product_id == 0xA053
    assert rig.device.units["yield_total_wh"] == "Wh"
    assert rig.device.quantities["yield_total_wh"].resettable


async def test_yield_total_follows_the_integrated_model(rig: Rig) -> None:
    names = ["yield_total_wh", "pv_power_w", "battery_current_a"]
    first = await rig.device.read(names)
    t1 = rig.clock.now()
    await asyncio.sleep(1.5)
    second = await rig.device.read(names)
    t2 = rig.clock.now()
    b1 = sent_block_for(rig.sim, first, before=t1)
    b2 = sent_block_for(rig.sim, second, before=t2)
    assert b2.ts > b1.ts + 60  # 1.5 s real at speed 60, less a few block intervals
    integrator = EnergyIntegrator()
    integrator.integrate(rig.sim.home.pv_w, b1.ts, b2.ts)
    expected = integrator.import_wh * EFFICIENCY
    # H19 counts whole 10 Wh steps: each reading is floored, so the delta is within one step.
    assert abs((second["yield_total_wh"] - first["yield_total_wh"]) - expected) <= 10.0 + 0.5


async def test_unknown_and_unsent_names(rig: Rig) -> None:
    with pytest.raises(ValueError, match="unknown VE.Direct quantities: nope"):
        await rig.device.read(["nope"])
    with pytest.raises(DeviceUnavailableError, match=r"does not send state_of_charge_permille"):
        await rig.device.read(["state_of_charge_permille"])


async def test_corrupted_blocks_skipped_then_good_ones_read(rig: Rig) -> None:
    await rig.device.read()
    errors_before = rig.device.parser.stats.checksum_errors
    rig.sim.corrupt_next(3)
    await eventually(
        lambda: rig.device.parser.stats.checksum_errors >= errors_before + 3,
        what="three checksum errors",
    )
    blocks_before = rig.device.parser.stats.blocks
    await eventually(
        lambda: rig.device.parser.stats.blocks >= blocks_before + 2,
        what="good blocks after the bad ones",
    )
    values = await rig.device.read()
    block = sent_block_for(rig.sim, values)
    bad = [b for b in rig.sim.history if not b.good]
    assert len(bad) == 3
    assert block.ts > max(b.ts for b in bad)
    assert rig.device.parser.stats.checksum_errors == errors_before + 3


async def test_hex_frames_and_garbage_on_the_line(rig: Rig) -> None:
    await rig.device.read()
    stats = rig.device.parser.stats
    rig.sim.interleave_hex()
    rig.sim.garbage(200)
    await eventually(lambda: stats.hex_frames >= 1, what="a HEX frame")
    rig.sim.interleave_hex()
    blocks_before = stats.blocks
    await eventually(lambda: stats.blocks >= blocks_before + 3, what="blocks")
    assert stats.hex_frames == 2
    assert stats.garbage_bytes >= 1
    values = await rig.device.read()
    block = sent_block_for(rig.sim, values)
    assert block.ts >= rig.sim.history[-1].ts - 4 * INTERVAL_S * SPEED


async def test_yield_reset_is_reported_as_it_is(rig: Rig) -> None:
    before = (await rig.device.read(["yield_total_wh"]))["yield_total_wh"]
    assert before >= 123_450
    rig.sim.reset_yield()

    async def dropped() -> bool:
        return (await rig.device.read(["yield_total_wh"]))["yield_total_wh"] < 100

    # The driver passes the drop on unchanged: booking it as a reset is the agent's job.
    await eventually(dropped, what="H19 back near zero")


@pytest.mark.slow
async def test_pause_raises_plain_error_then_recovers(rig: Rig) -> None:
    await rig.device.read()
    rig.sim.pause(2.0)
    await asyncio.sleep(TIMEOUT_S + 0.3)
    with pytest.raises(DeviceUnavailableError) as info:
        await rig.device.read()
    message = str(info.value)
    assert message.startswith(f"no VE.Direct frame on {rig.pair.device_path} for ")
    assert message.endswith(" s")

    async def back() -> bool:
        try:
            await rig.device.read()
        except DeviceUnavailableError:
            return False
        return True

    await eventually(back, timeout_s=5.0, what="recovery after the pause")


@pytest.mark.slow
async def test_unplug_and_replug_recovers_without_a_new_device(rig: Rig) -> None:
    await rig.device.read()
    rig.pair.unplug()

    async def gone() -> bool:
        try:
            await rig.device.read()
        except DeviceUnavailableError as exc:
            return "is gone" in str(exc)
        return False

    await eventually(gone, what="the port to be reported gone")
    with pytest.raises(DeviceUnavailableError, match=r"^serial port .*ve-device is gone$"):
        await rig.device.read()
    await asyncio.sleep(0.5)
    rig.replug()  # a new adapter at the same path; the simulator reopens its end by itself

    async def back() -> bool:
        try:
            values = await rig.device.read()
        except DeviceUnavailableError:
            return False
        return values["pv_power_w"] > 0

    await eventually(back, timeout_s=8.0, what="recovery after replugging")
    values = await rig.device.read()
    block = sent_block_for(rig.sim, values)
    assert block.ts > rig.clock.now() - 4 * INTERVAL_S * SPEED


async def test_no_device_at_all(tmp_path: Path) -> None:
    device = VeDirectDevice(str(tmp_path / "ttyUSB9"), timeout_s=0.5)
    try:
        with pytest.raises(DeviceUnavailableError, match=r"^serial port .*ttyUSB9 is gone$"):
            await device.read()
    finally:
        await device.close()


async def test_silent_port_times_out_after_timeout_s(tmp_path: Path) -> None:
    with PtyPair(tmp_path, "quiet") as pair:
        device = VeDirectDevice(str(pair.device_path), timeout_s=0.5)
        try:
            started = time.monotonic()
            with pytest.raises(DeviceUnavailableError) as info:
                await device.read()
            assert 0.4 <= time.monotonic() - started < 2.0
            assert str(info.value) == f"no VE.Direct frame on {pair.device_path} for 0.5 s"
        finally:
            await device.close()
