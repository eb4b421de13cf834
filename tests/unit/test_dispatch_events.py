"""Dispatch events' pure logic: request checks, allocation by capability, flows and status."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.domain.dispatch_events import (
    DeviceCapability,
    EventRequest,
    EventRequestError,
    allocate,
    check_request,
    event_status,
    measured_flow,
    parse_group,
    ramped,
    requested_flow_w,
)
from cloud.services.dispatch import flex_delivered_w
from protocol.dispatch import FULL_SCALE, ControlMode

NOW = 1_800_000_000


def req(
    control: ControlMode = ControlMode.OP_MOD_FIXED_W, value: int = 10_000, **kw: object
) -> EventRequest:
    fields: dict[str, object] = {"group": "all", "start": NOW, "duration_s": 600} | kw
    return EventRequest(control=control, value=value, **fields)  # type: ignore[arg-type]


def dev(i: int, max_w: int = 5000, soc: int | None = 500, online: bool = True) -> DeviceCapability:
    return DeviceCapability(f"d{i}", f"s{i}", 6000, max_w, soc, online)


def test_groups_parse_and_bad_ones_are_refused() -> None:
    assert parse_group("all") == ("all", "")
    assert parse_group("zone:north") == ("zone", "north")
    assert parse_group("feeder:7") == ("feeder", "7")
    for bad in ("", "zone:", "feeder:", "north", "where:colour=red"):
        with pytest.raises(EventRequestError):
            parse_group(bad)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"duration_s": 0}, "duration"),
        ({"start": NOW - 700}, "already be over"),
        ({"ramp_s": 601}, "ramp"),
        ({"randomize_start_s": 4000}, "randomize"),
        ({"group": "nowhere"}, "group"),
    ],
)
def test_requests_are_checked(change: dict[str, object], message: str) -> None:
    with pytest.raises(EventRequestError, match=message):
        check_request(req(**change), NOW)  # type: ignore[arg-type]
    with pytest.raises(EventRequestError, match="0..10000"):
        check_request(req(ControlMode.OP_MOD_MAX_LIM_W, 10_001), NOW)
    check_request(req(), NOW)


def test_a_battery_target_is_split_by_headroom_and_skips_who_cannot_help() -> None:
    devices = [dev(0), dev(1, max_w=2500), dev(2, soc=50), dev(3, online=False), dev(4, soc=None)]
    shares = allocate(req(value=6000), devices)
    assert [(a.device_id, a.expected_w) for a in shares] == [("d0", 4000), ("d1", 2000)]
    assert [a.value for a in shares] == [8000, 8000]  # 80 % of each one's rate
    # more than the group can give: everyone at full rate, no more
    full = allocate(req(value=50_000), devices)
    assert [a.expected_w for a in full] == [5000, 2500]
    # charging: a full battery cannot take more
    charge = allocate(req(value=-3000), [dev(0), dev(1, soc=990)])
    assert [(a.device_id, a.value, a.expected_w) for a in charge] == [("d0", -6000, -3000)]
    assert allocate(req(value=1000), [dev(2, soc=50)]) == []


def test_limits_and_connect_go_to_every_online_device() -> None:
    devices = [dev(0), dev(1, online=False), dev(2)]
    cap = allocate(req(ControlMode.OP_MOD_MAX_LIM_W, 2500), devices)
    assert [(a.device_id, a.value, a.expected_w) for a in cap] == [
        ("d0", 2500, 1500),
        ("d2", 2500, 1500),
    ]
    off = allocate(req(ControlMode.OP_MOD_CONNECT, 0), devices)
    assert [a.value for a in off] == [0, 0]


@given(
    target=st.integers(-100_000, 100_000),
    rates=st.lists(st.integers(0, 20_000), min_size=1, max_size=30),
    socs=st.lists(st.integers(0, 1000), min_size=30, max_size=30),
)
def test_shares_never_exceed_the_target_nor_a_device(
    target: int, rates: list[int], socs: list[int]
) -> None:
    devices = [dev(i, max_w=r, soc=socs[i]) for i, r in enumerate(rates)]
    shares = allocate(req(value=target), devices)
    total = sum(a.expected_w for a in shares)
    assert abs(total) <= abs(target)
    for a in shares:
        d = next(x for x in devices if x.device_id == a.device_id)
        assert abs(a.value) <= FULL_SCALE
        assert abs(a.expected_w) <= d.battery_max_w
        assert a.expected_w == 0 or (a.expected_w > 0) == (target > 0)
    # the shares come as close to the target as integer percentages of each rate allow
    room = sum(
        d.battery_max_w for d in devices if d.battery_max_w and 100 < (d.soc_permille or 0) < 950
    )
    if target > 0 and all(s > 100 for s in socs[: len(rates)]):
        assert abs(total) >= min(abs(target), room) - len(shares) * max(rates) // FULL_SCALE - len(
            shares
        )


def test_flows_requests_and_delivery() -> None:
    c = ControlMode
    assert measured_flow(c.OP_MOD_FIXED_W, 3000, -500, 200) == -500
    assert measured_flow(c.OP_MOD_MAX_LIM_W, 3000, -500, 200) == 3000
    assert measured_flow(c.OP_MOD_EXP_LIM_W, 3000, -500, -2000) == -2000
    share = allocate(req(c.OP_MOD_MAX_LIM_W, 5000), [dev(0)])[0]  # cap 3000 W of 6000
    assert requested_flow_w(c.OP_MOD_MAX_LIM_W, share, 4500) == 3000
    assert requested_flow_w(c.OP_MOD_MAX_LIM_W, share, 2000) == 2000  # under the cap already
    assert ramped(3000, 4500, NOW + 30, NOW, 60) == 3750
    assert ramped(3000, 4500, NOW + 90, NOW, 60) == 3000
    assert flex_delivered_w(3000, 3200, 4500) == 1300  # curtailed 1300 of the 1500 asked
    assert flex_delivered_w(3000, 2000, 4500) == 1500  # more than asked earns what was asked
    assert flex_delivered_w(2500, 2600, 0) == 2500
    assert flex_delivered_w(2500, -100, 0) == 0
    assert event_status(NOW, NOW + 10, False, NOW - 1) == "scheduled"
    assert event_status(NOW, NOW + 10, False, NOW) == "active"
    assert event_status(NOW, NOW + 10, False, NOW + 10) == "completed"
    assert event_status(NOW, NOW + 10, True, NOW) == "cancelled"
