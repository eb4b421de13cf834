"""The live fleet's pure state: incremental totals equal a recount, states and the change log."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cloud.domain.fleet_state import FleetState, Totals
from protocol.telemetry import Health, Telemetry


def sample(
    device: str,
    seq: int,
    pv: int = 0,
    bat: int = 0,
    soc: int = 500,
    grid: int = 0,
    health: Health = Health.OK,
    backlog: int = 0,
) -> Telemetry:
    return Telemetry(device, 1, seq, seq * 1000, pv, bat, soc, grid, health, backlog)


def recount(fs: FleetState, group: str) -> Totals:
    t = Totals()
    for d in fs.members(group):
        t.add(d.contribution, 1)
    return t


def fleet() -> FleetState:
    fs = FleetState()
    for i in range(4):
        fs.register(f"d{i}", f"s{i}", "north" if i < 2 else "south", 5000, 10_000, 5000)
    return fs


def test_totals_follow_samples_status_and_zone_moves() -> None:
    fs = fleet()
    fs.on_telemetry(sample("d0", 1, pv=3000, bat=1000, grid=-2000), 1000)
    fs.on_telemetry(sample("d2", 1, pv=1000, bat=-500, grid=700), 1000)
    north, south, total = fs.totals["zone:north"], fs.totals["zone:south"], fs.totals["all"]
    assert (north.pv_w, north.battery_w, north.export_w, north.import_w) == (3000, 1000, 2000, 0)
    assert (south.pv_w, south.import_w, south.load_w) == (1000, 700, 1200)
    assert (total.devices, total.online, total.stored_wh) == (4, 2, 10_000)
    # a newer sample replaces the old one's share; an older one is ignored
    fs.on_telemetry(sample("d0", 2, pv=2000), 2000)
    fs.on_telemetry(sample("d0", 1, pv=9999), 2500)
    assert fs.totals["all"].pv_w == 3000
    # the last will takes a device's power out of the totals
    fs.on_status("d2", "offline", 0, 3000)
    assert fs.devices["d2"].state == "offline" and fs.totals["zone:south"].pv_w == 0
    fs.register("d0", "s0", "south", 5000, 10_000, 5000)
    assert (fs.totals["zone:north"].devices, fs.totals["zone:south"].devices) == (1, 3)
    assert fs.totals["zone:south"].pv_w == 2000 and fs.totals["zone:north"].pv_w == 0
    for g in ("all", "zone:north", "zone:south"):
        assert fs.totals[g].as_dict() == recount(fs, g).as_dict()


def test_states_from_health_backlog_and_silence() -> None:
    fs = fleet()
    fs.on_telemetry(sample("d0", 1, health=Health.CLOCK_UNSYNCHRONISED), 1000)
    fs.on_telemetry(sample("d1", 1, backlog=12), 1000)
    fs.on_telemetry(sample("d2", 1, health=Health.FAULT | Health.CLOCK_UNSYNCHRONISED), 1000)
    assert [fs.devices[f"d{i}"].state for i in range(4)] == [
        "clock_unsynchronised",
        "buffering",
        "fault",
        "offline",
    ]
    gone = fs.expire(1000 + 61_000)
    assert {d.device_id for d in gone} == {"d0", "d1", "d2"}
    assert fs.totals["all"].online == 0 and fs.devices["d0"].since_ms == 62_000


def test_the_change_log_yields_what_changed_since_a_version() -> None:
    fs = fleet()
    v = fs.version
    fs.on_telemetry(sample("d3", 1, pv=10), 1)
    fs.on_telemetry(sample("d1", 1, pv=10), 1)
    fs.on_telemetry(sample("d3", 2, pv=20), 1)
    assert [d.device_id for d in fs.changed_since(v)] == ["d1", "d3"]
    assert list(fs.changed_since(fs.version)) == []


@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),
            st.integers(0, 10_000),
            st.integers(-5000, 5000),
            st.integers(-9000, 9000),
            st.sampled_from(["t", "online", "offline", "move"]),
        ),
        max_size=60,
    )
)
def test_running_totals_always_equal_a_recount(
    events: list[tuple[int, int, int, int, str]],
) -> None:
    fs = FleetState()
    for i in range(6):
        fs.register(f"d{i}", f"s{i}", "a" if i % 2 else "b", 5000, 10_000, 5000)
    for seq, (i, pv, bat, grid, what) in enumerate(events, 1):
        dev = f"d{i}"
        if what == "t":
            fs.on_telemetry(sample(dev, seq, pv=pv, bat=bat, grid=grid, soc=pv % 1001), seq)
        elif what == "move":
            fs.register(dev, f"s{i}", "c" if pv % 2 else "a", 5000, 10_000, 5000)
        else:
            fs.on_status(dev, what, 0, seq)
    for g in fs.totals:
        assert fs.totals[g].as_dict() == recount(fs, g).as_dict(), g
