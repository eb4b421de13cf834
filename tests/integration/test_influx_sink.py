"""Time series out against a real server speaking the InfluxDB v2 write API (Debian's
VictoriaMetrics): closed intervals' energy per site arrives exactly, a dead server leaves the
watermark where it was, and the shipped dashboard's queries find the written series."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from cloud.runtime import CloudRuntime
from cloud.services.ingest import IngestService
from cloud.services.ledger import LedgerService
from cloud.services.timeseries import FIELDS, MEASUREMENT, InfluxSink
from cloud.settings import CloudSettings
from cloud.storage.ledger_store import LedgerStore
from cloud.storage.store import Store
from cloud.storage.tables import ledger_intervals
from edge.accounting import Channel
from protocol import topics
from rules.ledger import BatteryParams
from tests.helpers.records import FakeDevice
from tests.helpers.services import free_port
from tests.helpers.waiting import until
from tests.unit.test_grafana_dashboard import panel_queries

pytestmark = pytest.mark.tsdb

DEPLOYMENT = "gridmint-test"
CHANNELS = {
    "generated_wh": Channel.GENERATED,
    "imported_wh": Channel.IMPORTED,
}


class Clock:
    def __init__(self, t: float):
        self.t = t

    def now(self) -> float:
        return self.t


@pytest.fixture
async def victoria(tmp_path: Path) -> AsyncIterator[str]:
    """A VictoriaMetrics process on a free loopback port; its base URL."""
    binary = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    if not Path(binary).exists():
        pytest.skip("victoria-metrics is not installed: run ./scripts/test, which installs it")
    port = free_port()
    log = (tmp_path / "victoria.log").open("wb")
    proc = subprocess.Popen(  # fixed binary and arguments
        [
            binary,
            f"-httpListenAddr=127.0.0.1:{port}",
            f"-storageDataPath={tmp_path / 'vm-data'}",
            "-retentionPeriod=100y",  # the test's intervals lie hours in the past
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:

            async def healthy() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"victoria-metrics exited: {proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get(f"{url}/health")).status_code == 200
                return False

            await until(healthy, 30)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def _exported(url: str) -> dict[tuple[str, str, int], int]:
    """Every stored gridmint sample: (metric, site, interval start s) -> value."""
    async with httpx.AsyncClient() as http:
        # Recent writes sit in an in-memory buffer for up to a second: flush them to be read.
        (await http.get(f"{url}/internal/force_flush")).raise_for_status()
        r = await http.get(
            f"{url}/api/v1/export", params={"match[]": f'{{__name__=~"{MEASUREMENT}_.*"}}'}
        )
        r.raise_for_status()
    out: dict[tuple[str, str, int], int] = {}
    for line in r.text.splitlines():
        series = json.loads(line)
        m = series["metric"]
        assert m["deployment"] == DEPLOYMENT
        for ts_ms, v in zip(series["timestamps"], series["values"], strict=True):
            out[(m["__name__"], m["site"], ts_ms // 1000)] = int(v)
    return out


async def test_closed_intervals_reach_the_time_series(store: Store, victoria: str) -> None:
    # Two devices at site-1 (their energy adds up), one at site-2.
    devs = [
        FakeDevice("pi-a", site_id="site-1"),
        FakeDevice("pi-c", site_id="site-1"),
        FakeDevice("pi-b", site_id="site-2"),
    ]
    for d in devs:
        await store.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w)
    ingest = IngestService(store, devs[0].deployment, time.time)
    sent: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    first_start = devs[0].next_start
    for i in range(6):
        for k, d in enumerate(devs):
            # Different numbers per device and interval: a misplaced sum cannot match by luck.
            energy = {"generated_wh": 60 * i + 7 * k + 1, "imported_wh": 10 + i + k}
            start = d.next_start
            tok = d.sign({CHANNELS[f]: wh for f, wh in energy.items()})
            out = await ingest.handle(
                topics.topic(d.site_id, d.device_id, topics.Channel.TOKENS), tok.envelope
            )
            assert out.receipt.status == "accepted", out.receipt
            for f, wh in energy.items():
                sent[(d.site_id, start)][f] += wh

    # The clock stands where four of the six intervals are due.
    clock = Clock(first_start + 4 * 300 + 600)
    ledger = LedgerService(
        LedgerStore(store.engine),
        Ed25519PrivateKey.generate(),
        "gridmint/test/ledger",
        clock.now,
        grace_s=600,
        battery=lambda _s: BatteryParams(usable_capacity_wh=5000),
    )
    await ledger.load()
    assert await ledger.close_due() == 8  # 4 intervals x 2 sites

    async def closed() -> set[tuple[str, int]]:
        async with store.engine.connect() as conn:
            rows = (await conn.execute(select(ledger_intervals))).all()
        return {(r.site_id, int(r.interval_start)) for r in rows}

    def expected(intervals: set[tuple[str, int]]) -> dict[tuple[str, str, int], int]:
        return {
            (f"{MEASUREMENT}_{f}", site, start): sent[(site, start)][f]
            for site, start in intervals
            for f in FIELDS
        }

    # A server that is not there: the round fails plainly, nothing counts as written.
    dead = InfluxSink(
        ledger.store,
        url=f"http://127.0.0.1:{free_port()}",
        token="t",
        org="gridmint",
        bucket="gridmint",
        deployment=DEPLOYMENT,
        timeout_ms=2000,
    )
    try:
        with pytest.raises(Exception):  # noqa: B017 - urllib3's connection error, whatever kind
            await dead.run_once()
        assert dead.watermark == -1 and dead.written == 0
    finally:
        dead.close()

    sink = InfluxSink(
        ledger.store,
        url=victoria,
        token="t",
        org="gridmint",
        bucket="gridmint",
        deployment=DEPLOYMENT,
        batch=3,  # several batches per round
    )
    try:
        assert await sink.run_once() == 8
        assert await sink.run_once() == 0  # the watermark holds: nothing is sent twice
        want = expected(await closed())
        assert len(want) == 8 * len(FIELDS)

        async def arrived() -> bool:
            return await _exported(victoria) == want

        await until(arrived, 20)

        # The next close: only the new intervals are written, and they arrive too.
        clock.t += 2 * 300
        assert await ledger.close_due() == 4
        assert await sink.run_once() == 4
        want = expected(await closed())
        assert len(want) == 12 * len(FIELDS)
        await until(arrived, 20)
    finally:
        sink.close()

    # The shipped dashboard's queries find series in what was written (its variables at All).
    async with httpx.AsyncClient() as http:
        for title, expr in panel_queries():
            q = expr.replace("$deployment", ".*").replace("$site", ".*")
            q = q.replace("$__range", "1d")
            r = await http.get(
                f"{victoria}/api/v1/query_range",
                params={"query": q, "start": first_start, "end": first_start + 3600, "step": 300},
            )
            r.raise_for_status()
            assert r.json()["data"]["result"], f"{title}: {q} found nothing"


async def test_runtime_runs_the_sink_only_when_configured(tmp_path: Path, victoria: str) -> None:
    base = {"database_url": f"sqlite:///{tmp_path / 'c.sqlite'}", "market_enabled": False}
    off = CloudRuntime(CloudSettings(**base))
    await off.start(serve_http=False, connect_mqtt=False)
    try:
        assert off.influx is None
    finally:
        await off.stop()
    on = CloudRuntime(CloudSettings(**base, influx_url=victoria, influx_every_s=0.05))
    await on.start(serve_http=False, connect_mqtt=False)
    try:
        assert on.influx is not None and on.is_sequencer
        sink = on.influx

        async def rounds_ran() -> bool:  # nothing closed yet: rounds that write nothing
            return sink.rounds >= 2

        await until(rounds_ran, 10)
    finally:
        await on.stop()
