"""Time series out: the energy of closed ledger intervals, per site, written to InfluxDB (v2 write
API, line protocol, via `influxdb-client`) for Grafana (firmware-configs/grafana/gridmint.json).

Owns: which points are written (MEASUREMENT, FIELDS, their tags and timestamps) and how far the
writing has got. One point per closed (site, interval), timestamped at the interval start in
seconds, integer Wh fields:

    gridmint_interval,deployment=D,site=S generated_wh=300i,imported_wh=20i,... <interval_start>

The watermark (the highest ledger log index written) lives in memory: after a restart the sink
writes every closed interval again from the start of the log. That is harmless, because a point
with the same measurement, tags and timestamp overwrites the stored one in InfluxDB (and in
VictoriaMetrics, which deduplicates the identical sample), and it is bounded per round (`batch`).
"""

from __future__ import annotations

import asyncio
import logging

from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision

from cloud.storage.ledger_store import IntervalEnergy, LedgerStore

log = logging.getLogger(__name__)

MEASUREMENT = "gridmint_interval"
FIELDS = ("generated_wh", "imported_wh", "exported_wh", "charged_wh", "discharged_wh")


def metric_names() -> list[str]:
    """The names Prometheus-style readers (VictoriaMetrics, and so the Grafana dashboard) see:
    VictoriaMetrics names an InfluxDB field `<measurement>_<field>`."""
    return [f"{MEASUREMENT}_{f}" for f in FIELDS]


def _tag(value: str) -> str:
    # Line protocol: a comma, space or equals sign in a tag value is escaped with a backslash.
    for ch in ("\\", ",", "=", " "):
        value = value.replace(ch, "\\" + ch)
    return value


def interval_line(row: IntervalEnergy, deployment: str) -> str:
    """The line-protocol point of one closed (site, interval), timestamp in seconds. Written
    out here rather than through the client's Point builder so the exact wire text is plain:
    integer fields carry the `i` suffix (energy stays integer Wh end to end)."""
    tags = f"deployment={_tag(deployment)},site={_tag(row.site_id)}"
    fields = ",".join(f"{f}={int(getattr(row, f))}i" for f in FIELDS)
    return f"{MEASUREMENT},{tags} {fields} {row.interval_start}"


class InfluxSink:
    """Writes newly closed intervals' energy to an InfluxDB v2 bucket, a batch per call."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        url: str,
        token: str,
        org: str,
        bucket: str,
        deployment: str,
        batch: int = 5000,
        timeout_ms: int = 10_000,
    ):
        self.store = store
        self.bucket = bucket
        self.org = org
        self.deployment = deployment
        self.batch = batch
        self.watermark = -1  # highest ledger log index whose interval has been written
        self.written = 0  # points written since start (a counter for the logs and tests)
        self.rounds = 0  # rounds that completed (wrote everything closed, maybe nothing)
        # The client's own retries stay off: a failed round is retried as a whole next round
        # (the watermark only moves on success), and a hanging server costs one timeout, not
        # a retry storm on the worker thread.
        self._client = InfluxDBClient(url=url, token=token, org=org, timeout=timeout_ms)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    async def run_once(self) -> int:
        """Write what closed since the watermark (all of it, batch by batch); how many points.
        Raises on a write failure with the watermark at the last batch that went through."""
        total = 0
        while True:
            rows = await self.store.closed_energy(self.watermark, self.batch)
            if not rows:
                self.rounds += 1
                return total
            lines = [interval_line(r, self.deployment) for r in rows]
            # The client is synchronous (urllib3): in a thread, so a slow server never stalls
            # the event loop that ingest and the ledger run on.
            await asyncio.to_thread(self._write, lines)
            self.watermark = rows[-1].last_seq
            self.written += len(lines)
            total += len(lines)
            if len(rows) < self.batch:
                self.rounds += 1
                return total

    def _write(self, lines: list[str]) -> None:
        # WritePrecision.S is the string "s" though the signature names the class.
        precision: WritePrecision = WritePrecision.S  # type: ignore[assignment]
        self._write_api.write(
            bucket=self.bucket, org=self.org, record=lines, write_precision=precision
        )

    def close(self) -> None:
        """Release the HTTP connections."""
        self._write_api.close()  # type: ignore[no-untyped-call]  # the library's own gap
        self._client.close()  # type: ignore[no-untyped-call]
