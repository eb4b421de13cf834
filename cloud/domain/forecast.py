"""A simple generation forecast: the clear-sky shape of the day, scaled by recent delivery.

Owns: how much a site is expected to generate in a future interval, for the offer check ("an
offer is covered by tradable Tgen plus a limited share of the forecast") and for automated
sellers. The shape is the sun's elevation over a horizontal panel (sin(elevation)^1.15, the
usual air-mass approximation); its scale is the site's signed delivery over the last day
divided by what the shape predicts for those same intervals, so a cloudy week or a small
array lowers it on its own. Pure: the caller passes the recent deliveries.

Floats are used inside the shape; every result is whole Wh, rounded down (a forecast is an
allowance, never signed data).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

CLEAR_SKY_EXPONENT = 1.15
_SAMPLES = 5  # shape samples per interval
# Recent intervals with less sun than this (sun below about 9 degrees) do not set the scale:
# dividing by a near-zero prediction would blow a dawn reading up into a huge forecast.
MIN_SHAPE_PER_HOUR = 0.1


def clear_sky_shape(ts: float, latitude_deg: float, longitude_deg: float) -> float:
    """0 at night, up to 1 with the sun at the zenith."""
    day = (ts / 86_400.0) % 365.25
    declination = math.radians(-23.44 * math.cos(2 * math.pi * (day + 10) / 365.25))
    solar_hour = (ts % 86_400) / 3600.0 + longitude_deg / 15.0
    hour_angle = math.radians(15.0 * (solar_hour - 12.0))
    lat = math.radians(latitude_deg)
    sin_elevation = math.sin(lat) * math.sin(declination) + math.cos(lat) * math.cos(
        declination
    ) * math.cos(hour_angle)
    if sin_elevation <= 0:
        return 0.0
    return math.pow(sin_elevation, CLEAR_SKY_EXPONENT)


def interval_shape(start: int, length_s: int, latitude_deg: float, longitude_deg: float) -> float:
    """The shape integrated over one interval, in shape-hours."""
    step = length_s / _SAMPLES
    return sum(
        clear_sky_shape(start + (k + 0.5) * step, latitude_deg, longitude_deg)
        for k in range(_SAMPLES)
    ) * (length_s / 3600.0 / _SAMPLES)


def forecast_wh(
    interval_start: int,
    interval_s: int,
    recent: Iterable[tuple[int, int, int]],
    latitude_deg: float,
    longitude_deg: float,
) -> int:
    """Expected generation (Wh) of [interval_start, +interval_s) from `recent` deliveries,
    each (start, length_s, generated_wh). 0 without daylight in the recent window."""
    delivered = 0
    predicted = 0.0
    for start, length, wh in recent:
        shape = interval_shape(start, length, latitude_deg, longitude_deg)
        if shape < MIN_SHAPE_PER_HOUR * length / 3600:
            continue  # dawn and dusk: too little sun to learn the array's size from
        delivered += wh
        predicted += shape
    if delivered <= 0 or predicted <= 0:
        return 0
    scale = delivered / predicted  # Wh per shape-hour: the array's effective clear-sky power
    return math.floor(
        scale * interval_shape(interval_start, interval_s, latitude_deg, longitude_deg)
    )
