"""Groups of the fleet: by tag (zone, feeder), by site or device, and by criteria.

Owns: the group names operators, the API and OpenADR programs use, and whether a device is in
one. A tag group ("zone:north", "feeder:F7") has running totals in FleetState; a criteria
group is evaluated against each device's live state when asked:

    where:soc>=60,battery=yes,state=online

Conditions are joined by commas and all must hold. Keys: zone, feeder, site, state (=, !=);
battery (= yes|no: the device reports a battery); soc (percent), rating_w, pv_w, battery_w,
grid_w (=, !=, <, <=, >, >=). A device without a sample has no soc or power: a condition on
one of them does not hold for it.
Pure: no I/O.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

GROUP_KINDS = ("all", "zone", "feeder", "site", "device", "where")
STATES = ("online", "offline", "buffering", "fault", "clock_unsynchronised")
TEXT_KEYS = ("zone", "feeder", "site", "state")
NUMBER_KEYS = ("soc", "rating_w", "pv_w", "battery_w", "grid_w")
MAX_VALUE = 64
MAX_GROUP = 80  # stored with each dispatch event
MAX_CRITERIA = 8

_OPS: dict[str, Callable[[int, int], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "!=": operator.ne,
    "=": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
}
_CONDITION = re.compile(r"^([a-z_]+)(>=|<=|!=|=|>|<)([A-Za-z0-9_.:-]+)$")
_HELP = (
    "all, zone:<zone>, feeder:<feeder>, site:<site>, device:<device> or "
    "where:<key><op><value>,... (keys: zone, feeder, site, state, battery, soc, rating_w, "
    "pv_w, battery_w, grid_w)"
)


class GroupError(ValueError):
    """A group name that means nothing; the message says what would."""


class Member(Protocol):
    """What a criterion reads of a device (cloud.domain.fleet_state.DeviceLive has it)."""

    @property
    def device_id(self) -> str: ...
    @property
    def site_id(self) -> str: ...
    @property
    def zone(self) -> str: ...
    @property
    def feeder(self) -> str: ...
    @property
    def rating_w(self) -> int: ...
    @property
    def state(self) -> str: ...
    def reading(self, key: str) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Criterion:
    key: str
    op: str
    value: str | int

    def holds(self, d: Member) -> bool:
        if self.key in TEXT_KEYS:
            have = {
                "zone": d.zone,
                "feeder": d.feeder,
                "site": d.site_id,
                "state": d.state,
            }[self.key]
            return (have == self.value) == (self.op == "=")
        if self.key == "battery":
            return (d.reading("battery_w") is not None) == (self.value == "yes")
        assert isinstance(self.value, int)
        got: int | None
        want = self.value
        if self.key == "rating_w":
            got = d.rating_w
        elif self.key == "soc":  # percent against permille, without rounding either
            got, want = d.reading("soc_permille"), self.value * 10
        else:
            got = d.reading(self.key)
        return got is not None and _OPS[self.op](got, want)


@dataclass(frozen=True, slots=True)
class Group:
    kind: str
    value: str = ""
    criteria: tuple[Criterion, ...] = ()

    @property
    def running(self) -> bool:
        """Kept as a running total by FleetState (cheap to read at any size)."""
        return self.kind in ("all", "zone", "feeder")

    def has(self, d: Member) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "zone":
            return d.zone == self.value
        if self.kind == "feeder":
            return d.feeder == self.value
        if self.kind == "site":
            return d.site_id == self.value
        if self.kind == "device":
            return d.device_id == self.value
        return all(c.holds(d) for c in self.criteria)


def _criterion(text: str, group: str) -> Criterion:
    m = _CONDITION.match(text)
    if m is None:
        raise GroupError(f"group {group!r}: {text!r} is not <key><op><value>")
    key, op, raw = m.groups()
    if key in TEXT_KEYS or key == "battery":
        if op not in ("=", "!="):
            raise GroupError(f"group {group!r}: {key} takes = or !=, not {op}")
        if key == "state" and raw not in STATES:
            raise GroupError(f"group {group!r}: state is one of {', '.join(STATES)}")
        if key == "battery":
            if raw not in ("yes", "no"):
                raise GroupError(f"group {group!r}: battery is yes or no")
            if op == "!=":  # battery!=yes is battery=no
                return Criterion(key, "=", "no" if raw == "yes" else "yes")
        return Criterion(key, op, raw)
    if key in NUMBER_KEYS:
        if not re.fullmatch(r"-?\d{1,9}", raw):
            raise GroupError(f"group {group!r}: {key} compares with a whole number, not {raw!r}")
        value = int(raw)
        if key == "soc" and not 0 <= value <= 100:
            raise GroupError(f"group {group!r}: soc is a percentage 0..100")
        return Criterion(key, op, value)
    raise GroupError(f"group {group!r}: unknown key {key!r}; {_HELP}")


def parse_group(group: str) -> Group:
    """The group a name means; raises GroupError with the accepted forms."""
    if group == "all":
        return Group("all")
    if len(group) > MAX_GROUP:
        raise GroupError(f"a group name is at most {MAX_GROUP} characters")
    kind, sep, value = group.partition(":")
    if not sep or kind not in GROUP_KINDS[1:] or not value:
        raise GroupError(f"group {group!r} is not one of {_HELP}")
    if kind != "where":
        if len(value) > MAX_VALUE:
            raise GroupError(f"group {group!r}: names are at most {MAX_VALUE} characters")
        return Group(kind, value)
    parts = value.split(",")
    if len(parts) > MAX_CRITERIA:
        raise GroupError(f"group {group!r}: at most {MAX_CRITERIA} conditions")
    return Group("where", value, tuple(_criterion(p.strip(), group) for p in parts))
