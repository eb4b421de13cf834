"""Fleet groups: tag, site, device and criteria groups, parsed and matched (pure)."""

from __future__ import annotations

import pytest

from cloud.domain.fleet_groups import Criterion, GroupError, parse_group
from cloud.domain.fleet_state import FleetState
from protocol.telemetry import Telemetry


def _state() -> FleetState:
    s = FleetState()
    s.register("d1", "s1", "north", 5000, feeder="F1")
    s.register("d2", "s2", "north", 4000, feeder="F2")
    s.register("d3", "s3", "south", 6000, feeder="F1")
    s.register("d4", "s4", "south", 3000)  # no feeder, never reports
    for i, (soc, battery, pv) in enumerate([(800, -500, 3000), (300, 0, 0), (600, None, 1200)]):
        t = Telemetry(
            device_id=f"d{i + 1}",
            boot=1,
            seq=1,
            at_ms=1000,
            pv_w=pv,
            battery_w=battery,
            soc_permille=soc if battery is not None else None,
            grid_w=-100,
        )
        s.on_telemetry(t, 1000)
    return s


def ids(s: FleetState, group: str) -> list[str]:
    return sorted(d.device_id for d in s.members(group))


def test_tag_groups_and_their_running_totals() -> None:
    s = _state()
    assert ids(s, "feeder:F1") == ["d1", "d3"]
    assert ids(s, "zone:south") == ["d3", "d4"]
    assert "feeder:F1" in s.totals and "feeder:F2" in s.totals
    assert s.group_totals("feeder:F1").pv_w == 4200
    assert s.group_totals("feeder:F1").devices == 2
    # moving a site to another feeder moves its contribution
    s.register("d3", "s3", "south", 6000, feeder="F2")
    assert s.group_totals("feeder:F1").pv_w == 3000
    assert s.group_totals("feeder:F2").pv_w == 1200
    assert s.group_totals("feeder:F1").devices == 1


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        ("where:soc>=60", ["d1"]),  # d3 reports no battery: its soc is None, so no match
        ("where:battery=yes", ["d1", "d2"]),
        ("where:battery=no", ["d3", "d4"]),
        ("where:battery!=yes", ["d3", "d4"]),
        ("where:soc>=60,battery=yes", ["d1"]),
        ("where:soc<50", ["d2"]),
        ("where:pv_w>1000,zone=north", ["d1"]),
        ("where:state=offline", ["d4"]),
        ("where:state!=offline,feeder=F1", ["d1", "d3"]),
        ("where:rating_w>=5000", ["d1", "d3"]),
        ("where:grid_w<0", ["d1", "d2", "d3"]),
        ("where:site=s2", ["d2"]),
    ],
)
def test_criteria_groups(group: str, expected: list[str]) -> None:
    assert ids(_state(), group) == expected


def test_soc_compares_percent_with_permille_exactly() -> None:
    s = _state()
    assert ids(s, "where:soc=80") == ["d1"]
    assert ids(s, "where:soc>80") == []
    assert ids(s, "where:soc>79") == ["d1"]


def test_criteria_groups_are_summed_when_asked() -> None:
    s = _state()
    assert "where:soc>=60" not in s.totals
    assert s.group_totals("where:soc>=50").pv_w == 3000
    assert s.group_totals("where:pv_w>=1000").pv_w == 4200


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ("", "not one of"),
        ("feeder:", "not one of"),
        ("north", "not one of"),
        ("where:", "not one of"),
        ("where:colour=red", "unknown key 'colour'"),
        ("where:soc>=sixty", "whole number"),
        ("where:soc>=150", "0..100"),
        ("where:zone>north", "takes = or !="),
        ("where:state=asleep", "state is one of"),
        ("where:battery=maybe", "yes or no"),
        ("where:soc>=", "not <key><op><value>"),
        ("where:" + ",".join(["soc>=1"] * 9), "at most"),
        ("zone:" + "z" * 90, "at most 80"),
    ],
)
def test_bad_groups_say_what_would_do(group: str, message: str) -> None:
    with pytest.raises(GroupError, match=message):
        parse_group(group)
    assert list(_state().members(group)) == []


def test_parsed_forms() -> None:
    assert parse_group("feeder:F-7").kind == "feeder"
    g = parse_group("where:soc>=60, battery=yes")
    assert g.criteria == (Criterion("soc", ">=", 60), Criterion("battery", "=", "yes"))
    assert not g.running and parse_group("zone:a").running
