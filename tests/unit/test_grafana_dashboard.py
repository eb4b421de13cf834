"""The shipped Grafana dashboard reads what the time series sink writes: every panel and variable
uses the one datasource the docs tell operators to create, and only metric names the sink writes
(a renamed field would otherwise leave a panel silently empty)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from cloud.services.timeseries import FIELDS, metric_names

DASHBOARD = Path(__file__).resolve().parents[2] / "firmware-configs" / "grafana" / "gridmint.json"
DATASOURCE_UID = "gridmint-tsdb"  # docs/operations.md, "Time series (InfluxDB / Grafana)"
METRIC = re.compile(r"\bgridmint_[a-z_]+")


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, query) of every target of every panel."""
    return [(p["title"], t["expr"]) for p in _dashboard()["panels"] for t in p["targets"]]


def test_every_panel_uses_the_datasource() -> None:
    dash = _dashboard()
    assert dash["panels"]
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == DATASOURCE_UID, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == DATASOURCE_UID, p["title"]
    for v in dash["templating"]["list"]:
        assert v["datasource"]["uid"] == DATASOURCE_UID, v["name"]


def test_queries_use_only_metrics_the_sink_writes() -> None:
    written = set(metric_names())
    used: set[str] = set()
    for title, expr in panel_queries():
        names = set(METRIC.findall(expr))
        assert names, f"{title}: no gridmint metric in {expr!r}"
        assert names <= written, f"{title}: {sorted(names - written)} not written by the sink"
        used |= names
    for v in _dashboard()["templating"]["list"]:
        assert set(METRIC.findall(v["definition"])) <= written, v["name"]
    # Every field the sink writes is on the dashboard.
    assert used == written
    assert len(written) == len(FIELDS)
