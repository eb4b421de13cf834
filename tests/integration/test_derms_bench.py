"""benchmarks/derms.py's code path at 200 devices, so that the benchmark cannot rot: a real
Mosquitto, the aggregator with its HTTP API, the DermsFleet in its own process, the HTTP load
in another. Asserts that every phase produced its figures, nothing about speed."""

from __future__ import annotations

import math

import pytest

from benchmarks import derms
from tests.helpers.services import PG_DSN

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_the_benchmark_runs_at_200_devices(database: str) -> None:
    argv = ["--devices", "200", "--baseline-devices", "0", "--latency-s", "2"]
    argv += ["--totals-rounds", "2", "--telemetry-s", "1", "--fleet-processes", "2"]
    if database == "postgres":
        argv += ["--database-url", PG_DSN]
    args = derms.parse_args(argv)
    res = derms.run_size(200, args)
    assert res.ok, res.error or derms.summary(res, None, args)
    assert all(res.latency[e] for e in derms.ENDPOINTS)
    assert not any(res.latency_errors.values())
    assert len(res.totals_delays) == 2
    assert res.acked == res.targeted == 200
    assert math.isfinite(res.all_acked_s) and res.all_acked_s >= 0
    assert "200 devices (ok)" in derms.summary(res, None, args)
