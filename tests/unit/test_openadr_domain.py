"""cloud.domain.openadr: ISO 8601 durations, RFC 3339 times, GROUP targets, the event-to-dispatch
mapping and the client-credential tokens."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.domain.openadr import (
    OpenAdrClient,
    OpenAdrError,
    check_token,
    event_request,
    format_datetime_ms,
    format_duration,
    group_of,
    issue_token,
    parse_clients,
    parse_datetime,
    parse_duration,
)
from protocol.dispatch import ControlMode


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("PT0S", 0),
        ("PT1H", 3600),
        ("PT15M", 900),
        ("PT1M30S", 90),
        ("P1D", 86400),
        ("P1DT2H", 93600),
        ("P2W", 14 * 86400),
        ("PT5.000S", 5),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["P", "PT", "P1Y", "P1M", "PT1.5S", "-PT1H", "1H", "PT1H ", "P1DT", "PTH", ""]
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(OpenAdrError) as exc:
        parse_duration(text)
    assert exc.value.status == 400


@given(st.integers(min_value=0, max_value=400 * 86400))
def test_duration_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_datetimes() -> None:
    assert parse_datetime("2027-01-15T08:00:00Z") == 1_800_000_000
    assert parse_datetime("2027-01-15T09:00:00+01:00") == 1_800_000_000
    assert parse_datetime("2027-01-15T08:00:00.900Z") == 1_800_000_000
    assert format_datetime_ms(1_800_000_000_250) == "2027-01-15T08:00:00.250Z"
    for bad in ("2027-01-15T08:00:00", "2027-01-15", "yesterday"):
        with pytest.raises(OpenAdrError):
            parse_datetime(bad)


def test_group_targets() -> None:
    assert group_of(None) is None
    assert group_of([{"type": "VEN_NAME", "values": ["x"]}]) is None
    assert group_of([{"type": "GROUP", "values": ["site:s-1"]}]) == "site:s-1"
    for bad in (["a", "b"], ["street:1"], [3], []):
        with pytest.raises(OpenAdrError):
            group_of([{"type": "GROUP", "values": bad}])


def _event(ptype: str, value: object, **over: object) -> dict[str, object]:
    return {
        "programID": "p",
        "intervalPeriod": {"start": "2027-01-15T08:00:00Z", "duration": "PT30M"},
        "intervals": [{"id": 0, "payloads": [{"type": ptype, "values": [value]}]}],
        **over,
    }


def test_mapping_takes_the_intervals_own_period_over_the_events() -> None:
    ev = _event("DISPATCH_SETPOINT", 1.25)
    ev["intervals"] = [
        {
            "id": 0,
            "intervalPeriod": {"start": "2027-01-15T09:00:00Z", "randomizeStart": "PT1M"},
            "payloads": [{"type": "DISPATCH_SETPOINT", "values": [1.25]}],
        }
    ]
    req = event_request({}, ev, program_id="p", event_id="e")
    assert req is not None
    assert (req.start, req.duration_s, req.randomize_start_s) == (1_800_003_600, 1800, 60)
    assert (req.group, req.control, req.value) == ("all", ControlMode.OP_MOD_FIXED_W, 1250)
    assert req.source == "openadr:p/e"


def test_units_come_from_the_event_then_the_program() -> None:
    program = {"payloadDescriptors": [{"payloadType": "IMPORT_CAPACITY_LIMIT", "units": "W"}]}
    req = event_request(
        program, _event("IMPORT_CAPACITY_LIMIT", 4000), program_id="p", event_id="e"
    )
    assert req is not None and req.value == 4000
    ev = _event(
        "IMPORT_CAPACITY_LIMIT",
        4,
        payloadDescriptors=[{"payloadType": "IMPORT_CAPACITY_LIMIT", "units": "KW"}],
    )
    req = event_request(program, ev, program_id="p", event_id="e")
    assert req is not None and req.value == 4000


def test_simple_levels() -> None:
    assert event_request({}, _event("SIMPLE", 0), program_id="p", event_id="e") is None
    values = [
        event_request({}, _event("SIMPLE", n), program_id="p", event_id="e") for n in (1, 2, 3)
    ]
    assert [r.value for r in values if r] == [5000, 2000, 0]
    assert {r.control for r in values if r} == {ControlMode.OP_MOD_IMP_LIM_W}
    with pytest.raises(OpenAdrError, match="SIMPLE level"):
        event_request({}, _event("SIMPLE", 1.5), program_id="p", event_id="e")
    with pytest.raises(OpenAdrError, match="number"):
        event_request({}, _event("SIMPLE", True), program_id="p", event_id="e")


def test_tokens() -> None:
    clients = parse_clients(
        '[{"client_id": "bl", "client_secret": "0123456789",'
        ' "scopes": ["read_all", "write_events"]}]'
    )
    bl = clients["bl"]
    token = issue_token(bl, frozenset({"read_all"}), expires=1000)
    assert check_token(token, clients, now=999) == ("bl", frozenset({"read_all"}))
    assert check_token(token, clients, now=1000) is None  # expired
    other = {"bl": OpenAdrClient("bl", "another-secret", bl.scopes)}
    assert check_token(token, other, now=0) is None  # the secret changed
    forged = issue_token(
        OpenAdrClient("bl", "guess-guess", frozenset({"write_vens"})),
        frozenset({"write_vens"}),
        expires=1000,
    )
    assert check_token(forged, clients, now=0) is None
    # Scopes a client lost since the token was issued no longer count.
    wide = issue_token(bl, frozenset({"read_all", "write_events"}), expires=1000)
    narrower = {"bl": OpenAdrClient("bl", bl.secret, frozenset({"read_all"}))}
    assert check_token(wide, narrower, now=0) == ("bl", frozenset({"read_all"}))
    for junk in ("", "oa3", "oa3.x.y", "a.b.c.d"):
        assert check_token(junk, clients, now=0) is None


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        "not json",
        '[{"client_id": "x", "client_secret": "short"}]',
        '[{"client_id": "has space", "client_secret": "long-enough"}]',
        '[{"client_id": "' + "x" * 49 + '", "client_secret": "long-enough"}]',
        '[{"client_id": "x", "client_secret": "long-enough", "scopes": ["admin"]}]',
    ],
)
def test_bad_client_settings(text: str) -> None:
    with pytest.raises(ValueError):
        parse_clients(text)
