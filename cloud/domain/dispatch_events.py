"""Dispatch events: what an operator asks of a group, and how it is shared among devices.

Owns: the event request and its checks, the allocation of a group's target across devices by
capability, an event's lifecycle status, which measured flow answers which control, and the
event's performance against its baseline. Pure: no I/O and no clock (callers pass `now`).

Units are those of protocol/dispatch.py. A request's `value` is the *group's* wish:

* opModFixedW / opModTargetW: the group's total W (+ discharge, into the home bus). The
  allocation splits it over the devices that can deliver it, in proportion to their headroom,
  and sends each its share (opModFixedW as hundredths of a percent of the device's maximum
  rate, opModTargetW in W).
* opModMaxLimW: hundredths of a percent of rating; every device gets the same limit.
* opModExpLimW / opModImpLimW: W per site; every device of a site gets it.
* opModConnect: 1 or 0 for every device.

Baseline (a stated method, as the issue asks): each targeted device's last reading of the
controlled flow before the event starts ("the last readings before the event"): taken when the
event is created, and again at its start for an event created ahead of time. Delivered power is
the measured flow; delivered *flexibility* is its move from the baseline in the direction the
command asks, capped at what was asked (`flex_delivered_w` in cloud/services/dispatch.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cloud.domain import fleet_groups
from protocol.dispatch import FULL_SCALE, MAX_ABS_W, ControlMode

MAX_DURATION_S = 7 * 24 * 3600
MAX_RANDOMIZE_S = 3600
MAX_NAME = 200


class EventRequestError(ValueError):
    """A request the aggregator refuses; the message is shown to the operator."""


@dataclass(frozen=True, slots=True)
class EventRequest:
    """What an operator (page, API or OpenADR 3 program owner) asks of a group."""

    group: str  # "all" | "zone:<zone>" | "site:<site_id>" | "device:<device_id>"
    control: ControlMode
    value: int
    start: int  # Unix s UTC
    duration_s: int
    ramp_s: int = 0
    randomize_start_s: int = 0
    name: str = ""
    source: str = "operator"


def parse_group(group: str) -> tuple[str, str]:
    """("all", "") or (kind, value) for the forms cloud/domain/fleet_groups.py knows;
    raises EventRequestError with those forms."""
    try:
        g = fleet_groups.parse_group(group)
    except fleet_groups.GroupError as exc:
        raise EventRequestError(str(exc)) from None
    return g.kind, g.value


def check_request(req: EventRequest, now: int) -> None:
    """Raise EventRequestError unless `req` can be dispatched."""
    parse_group(req.group)
    if req.control in (ControlMode.OP_MOD_FIXED_W, ControlMode.OP_MOD_TARGET_W):
        lo, hi = -MAX_ABS_W, MAX_ABS_W
    else:
        lo, hi = req.control.value_range
    if not lo <= req.value <= hi:
        raise EventRequestError(f"{req.control.wire_name} value {req.value} is not in {lo}..{hi}")
    if not 0 < req.duration_s <= MAX_DURATION_S:
        raise EventRequestError(f"duration must be 1..{MAX_DURATION_S} s, got {req.duration_s}")
    if req.start + req.duration_s <= now:
        raise EventRequestError("the event would already be over")
    if not 0 <= req.ramp_s <= req.duration_s:
        raise EventRequestError("ramp must be 0..duration")
    if not 0 <= req.randomize_start_s <= MAX_RANDOMIZE_S:
        raise EventRequestError(f"randomize_start must be 0..{MAX_RANDOMIZE_S} s")
    if len(req.name) > MAX_NAME:
        raise EventRequestError(f"name longer than {MAX_NAME} characters")


# --- allocation -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceCapability:
    """What the allocation knows of one device (from the registry and live telemetry)."""

    device_id: str
    site_id: str
    rating_w: int  # inverter rating (the registry's capacity)
    battery_max_w: int  # battery's maximum charge/discharge rate; 0: no battery
    soc_permille: int | None  # None: unknown (no battery telemetry yet)
    online: bool = True


@dataclass(frozen=True, slots=True)
class Allocation:
    """One device's share of an event: the command value and the W it stands for."""

    device_id: str
    site_id: str
    value: int
    expected_w: int  # the W this share is meant to deliver (0 where the control has no W)


#: A battery is not discharged below this state of charge nor charged above the top one.
SOC_FLOOR_PERMILLE = 100
SOC_CEILING_PERMILLE = 950


def headroom_w(d: DeviceCapability, control: ControlMode, direction: int) -> int:
    """W a device can add in `direction` (+1 discharge/into the bus, -1 charge)."""
    if not d.online:
        return 0
    if control is ControlMode.OP_MOD_FIXED_W:
        if d.battery_max_w <= 0 or d.soc_permille is None:
            return 0
        if direction > 0 and d.soc_permille <= SOC_FLOOR_PERMILLE:
            return 0
        if direction < 0 and d.soc_permille >= SOC_CEILING_PERMILLE:
            return 0
        return d.battery_max_w
    if control is ControlMode.OP_MOD_TARGET_W:
        return d.rating_w
    return 0


def allocate(req: EventRequest, devices: Sequence[DeviceCapability]) -> list[Allocation]:
    """Each targeted device's command value. Devices that can take no share are left out.

    W targets are split in proportion to headroom (largest remainder, so the shares add up
    to the target exactly where there is room for it, never beyond any device's headroom).
    """
    c = req.control
    if c in (ControlMode.OP_MOD_FIXED_W, ControlMode.OP_MOD_TARGET_W):
        direction = 1 if req.value >= 0 else -1
        rooms = [(d, headroom_w(d, c, direction)) for d in devices]
        rooms = [(d, r) for d, r in rooms if r > 0]
        total_room = sum(r for _, r in rooms)
        want = min(abs(req.value), total_room)
        if not rooms:
            return []
        shares = largest_remainder(want, [r for _, r in rooms])
        out = []
        for (d, room), share in zip(rooms, shares, strict=True):
            share = min(share, room)
            if c is ControlMode.OP_MOD_FIXED_W:
                value = direction * (share * FULL_SCALE // d.battery_max_w)
                expected = direction * (abs(value) * d.battery_max_w // FULL_SCALE)
            else:
                value = expected = direction * share
            out.append(Allocation(d.device_id, d.site_id, value, expected))
        return out
    targets = [d for d in devices if d.online]
    if c is ControlMode.OP_MOD_MAX_LIM_W:
        # expected_w of a generation limit is the cap in W: what the inverter may still give
        return [
            Allocation(d.device_id, d.site_id, req.value, d.rating_w * req.value // FULL_SCALE)
            for d in targets
        ]
    return [Allocation(d.device_id, d.site_id, req.value, req.value) for d in targets]


def largest_remainder(total: int, weights: Sequence[int]) -> list[int]:
    """Integer shares of `total` in proportion to `weights` (>= 0, not all 0), adding up to
    `total`: each gets its floor, the rest go to the largest remainders."""
    wsum = sum(weights)
    raw = [total * w for w in weights]
    shares = [r // wsum for r in raw]
    left = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-(raw[i] % wsum), i))
    for i in order[:left]:
        shares[i] += 1
    return shares


# --- lifecycle --------------------------------------------------------------------------------


def event_status(start: int, end: int, cancelled: bool, now: int) -> str:
    """ "cancelled", "scheduled", "active" or "completed"."""
    if cancelled:
        return "cancelled"
    if now < start:
        return "scheduled"
    if now < end:
        return "active"
    return "completed"


def measured_flow(
    control: ControlMode, pv_w: int | None, battery_w: int | None, grid_w: int | None
) -> int | None:
    """The telemetry flow a control steers: battery for opModFixedW, PV for a generation
    limit, the grid connection for export/import limits, the sum of PV and battery for
    opModTargetW and opModConnect (the device's own output)."""
    if control is ControlMode.OP_MOD_FIXED_W:
        return battery_w
    if control is ControlMode.OP_MOD_MAX_LIM_W:
        return pv_w
    if control in (ControlMode.OP_MOD_EXP_LIM_W, ControlMode.OP_MOD_IMP_LIM_W):
        return grid_w
    if pv_w is None and battery_w is None:
        return None
    return (pv_w or 0) + (battery_w or 0)


def requested_flow_w(control: ControlMode, allocation: Allocation, baseline: int) -> int:
    """The flow (as `measured_flow`) the device is asked for while the event runs.

    A setpoint asks for itself; a limit asks for the baseline cut to the limit (an inverter
    making less than its cap is not asked to make more); a disconnect asks for 0.
    """
    if control in (ControlMode.OP_MOD_FIXED_W, ControlMode.OP_MOD_TARGET_W):
        return allocation.expected_w
    if control is ControlMode.OP_MOD_MAX_LIM_W:
        return min(baseline, allocation.expected_w)
    if control is ControlMode.OP_MOD_EXP_LIM_W:
        return max(baseline, -allocation.value)  # export is negative grid power
    if control is ControlMode.OP_MOD_IMP_LIM_W:
        return min(baseline, allocation.value)
    return baseline if allocation.value else 0


def ramped(requested: int, baseline: int, t: int, start: int, ramp_s: int) -> int:
    """The request at time t during a linear ramp from the baseline (after it: `requested`)."""
    if ramp_s <= 0 or t >= start + ramp_s:
        return requested
    if t <= start:
        return baseline
    return baseline + (requested - baseline) * (t - start) // ramp_s


def flexibility_w(requested_or_measured: int, baseline: int) -> int:
    """Flexibility: how far a flow is from its baseline (W, >= 0)."""
    return abs(requested_or_measured - baseline)


# --- views ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventView:
    """An event as the board and the API show it."""

    event_id: str
    modification: int
    status: str  # "scheduled" | "active" | "completed" | "cancelled"
    request: EventRequest
    devices: int
    responses: dict[str, int] = field(default_factory=dict)  # response status name -> devices
    created_ms: int = 0
    created_by: str = ""


@dataclass(frozen=True, slots=True)
class SitePerformance:
    """One site's part in an event."""

    site_id: str
    requested_w: int
    delivered_w: int
    baseline_w: int
    soc_permille: int | None


@dataclass(frozen=True, slots=True)
class EventPerformance:
    """Requested versus delivered, now and over time (series: (unix s, requested, delivered))."""

    event_id: str
    requested_w: int
    delivered_w: int
    baseline_w: int
    sites: list[SitePerformance]
    series: list[tuple[int, int, int]]
    baseline_method: str = (
        "each device's last reading of the controlled flow before the event started"
    )
