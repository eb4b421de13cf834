"""SunSpec controls (models 123, 124) as data: the driver's tables from models.toml against the
simulator's independently typed offsets, and the engineering-units encoder for writes."""

from __future__ import annotations

import pytest

from edge.drivers.sunspec import Point, decode_point, encode_point, load_model_defs
from simulators import sunspec_device as sim


@pytest.mark.parametrize(
    ("model_id", "table", "read_only", "length"),
    [
        (123, sim.CTL, sim._CTL_READ_ONLY, sim.CONTROLS_LENGTH),
        (124, sim.STO, sim._STO_READ_ONLY, sim.STORAGE_LENGTH),
    ],
)
def test_models_toml_and_the_simulator_agree(
    model_id: int, table: dict[str, int], read_only: frozenset[str], length: int
) -> None:
    model = load_model_defs()[model_id]
    assert model.length == length
    named = {n: p for n, p in model.points.items() if n not in ("ID", "L")}
    assert {n: p.offset for n, p in named.items()} == table
    assert {n for n, p in named.items() if not p.writable} == set(read_only)


def test_key_points_have_their_scale_factors() -> None:
    defs = load_model_defs()
    assert defs[123].points["WMaxLimPct"].sf == "WMaxLimPct_SF"
    assert defs[124].points["OutWRte"].sf == "InOutWRte_SF"
    assert defs[124].points["InWRte"].sf == "InOutWRte_SF"
    assert defs[124].points["ChaState"].sf == "ChaState_SF"
    assert defs[124].points["StorCtl_Mod"].type == "bitfield16"


@pytest.mark.parametrize(
    ("ptype", "value", "sf", "words"),
    [
        ("uint16", 30.0, -2, [3000]),
        ("uint16", 30.0, 0, [30]),
        ("uint16", 55.5, -1, [555]),
        ("int16", -50.0, -2, [(-5000) & 0xFFFF]),
        ("enum16", 1.0, None, [1]),
        ("bitfield16", 2.0, None, [2]),
    ],
)
def test_encode_point_applies_the_scale_factor(
    ptype: str, value: float, sf: int | None, words: list[int]
) -> None:
    point = Point("X", 2, ptype, 1, "X_SF" if sf is not None else None)
    assert encode_point(point, value, sf) == words
    raw = decode_point(point, words)
    assert raw is not None and raw * 10.0 ** (sf or 0) == pytest.approx(value)


@pytest.mark.parametrize(
    ("ptype", "value", "sf"),
    [("uint16", -1.0, 0), ("uint16", 700.0, -2), ("int16", 400.0, -2), ("float32", 1.0, None)],
)
def test_encode_point_refuses_what_does_not_fit(ptype: str, value: float, sf: int | None) -> None:
    size = 2 if ptype == "float32" else 1
    with pytest.raises(ValueError, match="WMaxLimPct"):
        encode_point(Point("WMaxLimPct", 5, ptype, size, None, "Pct"), value, sf)
