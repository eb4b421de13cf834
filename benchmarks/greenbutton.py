"""Green Button export cost: write_feed over a site-year of 5-minute data, time and peak memory.

Run: .venv/bin/python -m benchmarks.greenbutton [--days 365] [--interval 300] [--repeats 3]

A measurement, not a test: it asserts nothing about speed. Each row writes one site's feed
(America/New_York, so two DST days) from generators of IntervalValues, consumed chunk by chunk
into a SHA-256 (or discarded, --sink null); the same-run baseline only iterates those generators,
so "write - baseline" is the writer's own cost. Times are the best of --repeats runs; the peak is
tracemalloc's over a separate run (tracing slows Python down, so it is never timed). The output is
checked once: the same digest on every run, and read_feed gives every value back.

--read adds read_feed over the written bytes (in memory); --validate adds xmlschema validation of
the 1-reading feed (slow: xmlschema is pure Python).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from benchmarks.machine import machine_facts
from cloud.domain.greenbutton import (
    FlowDirection,
    IntervalBlockValues,
    IntervalValue,
    Quality,
    ReadingSpec,
    UsagePointInfo,
    local_time_parameters,
    read_feed,
    validate,
    write_feed,
)

ZONE = "America/New_York"
YEAR = 2026
SITE = UsagePointInfo("site-0001", "Benchmark site", is_virtual=True, is_der=True)
SPECS = [
    ReadingSpec("import", "Import", flow_direction=FlowDirection.FORWARD),
    ReadingSpec("export", "Export", flow_direction=FlowDirection.REVERSE),
    ReadingSpec("pv", "PV", flow_direction=FlowDirection.REVERSE),
    ReadingSpec("net", "Net", flow_direction=FlowDirection.NET),
]


def values(n: int, interval_s: int, seed: int, marked: bool) -> Iterator[IntervalValue]:
    """`n` intervals from local midnight on 1 January; `marked`: every value has a quality (11,
    edge-derived) and a cost, as an export with tariffs would."""
    start = int(datetime(YEAR, 1, 1, tzinfo=ZoneInfo(ZONE)).timestamp())
    quality = Quality.DERIVED if marked else None
    for i in range(n):
        wh = (i * 7919 + seed * 104729) % 2500
        yield IntervalValue(
            start + i * interval_s, interval_s, wh, quality, wh * 31 if marked else None
        )


def feed(n: int, interval_s: int, readings: int, marked: bool) -> Iterator[bytes]:
    specs = [
        ReadingSpec(
            s.key,
            s.title,
            flow_direction=s.flow_direction,
            interval_s=interval_s,
            currency=840 if marked else None,
        )
        for s in SPECS[:readings]
    ]
    return write_feed(
        SITE,
        local_time_parameters(ZONE, YEAR),
        [(spec, values(n, interval_s, k, marked)) for k, spec in enumerate(specs)],
        feed_id="bench",
        updated=datetime(YEAR + 1, 1, 1, tzinfo=UTC),
        base_url="https://vpp.example",
        tz=ZONE,
    )


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Seconds: the best of `repeats` runs, since on a shared machine the slower runs measure
    the neighbours, not the code."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def traced_peak(fn: Callable[[], object]) -> int:
    """tracemalloc's peak, in bytes, over one run of `fn`."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def consume(chunks: Iterator[bytes], sink: str) -> tuple[int, str]:
    """(bytes, digest) of the feed; the digest is "" for the null sink."""
    size = 0
    if sink == "null":
        for chunk in chunks:
            size += len(chunk)
        return size, ""
    digest = hashlib.sha256()
    for chunk in chunks:
        size += len(chunk)
        digest.update(chunk)
    return size, digest.hexdigest()


Row = tuple[str, float, int, int]  # name, seconds, peak bytes, output bytes


def run(args: argparse.Namespace) -> list[Row]:
    n = args.days * 86400 // args.interval
    rows: list[Row] = []
    for readings in (1, 4):
        for marked in (False, True):
            label = f"{readings} reading{'s' if readings > 1 else ''}"
            label += ", quality + cost" if marked else ""

            def iterate(readings: int = readings, marked: bool = marked) -> None:
                for k in range(readings):
                    for _ in values(n, args.interval, k, marked):
                        pass

            def write(readings: int = readings, marked: bool = marked) -> tuple[int, str]:
                return consume(feed(n, args.interval, readings, marked), args.sink)

            size, digest = write()
            if write() != (size, digest):
                raise RuntimeError(f"{label}: two runs gave different output")
            data = b"".join(feed(n, args.interval, readings, marked))
            got = [
                len(item.values)
                for item in read_feed(io.BytesIO(data))
                if isinstance(item, IntervalBlockValues)
            ]
            if sum(got) != n * readings:
                raise RuntimeError(f"{label}: read back {sum(got)} values, wrote {n * readings}")

            rows.append(
                (
                    f"baseline: iterate the IntervalValues, {label}",
                    best_time(iterate, args.repeats),
                    traced_peak(iterate),
                    0,
                )
            )
            rows.append(
                (
                    f"write_feed -> {args.sink}, {label}",
                    best_time(write, args.repeats),
                    traced_peak(write),
                    size,
                )
            )
            if args.read:

                def read(data: bytes = data) -> None:
                    for _ in read_feed(io.BytesIO(data)):
                        pass

                rows.append(
                    (
                        f"read_feed (bytes in memory), {label}",
                        best_time(read, args.repeats),
                        traced_peak(read),
                        len(data),
                    )
                )
            if args.validate and readings == 1 and not marked:
                t0 = time.perf_counter()
                errors = validate(data)
                rows.append(
                    (f"validate (xmlschema), {label}", time.perf_counter() - t0, 0, len(data))
                )
                if errors:
                    raise RuntimeError(f"{label}: {len(errors)} schema errors, first: {errors[0]}")
    return rows


def print_report(facts: dict[str, str], rows: list[Row], args: argparse.Namespace) -> None:
    """The table."""
    print("machine")
    for k, v in facts.items():
        print(f"  {k:<13} {v}")
    n = args.days * 86400 // args.interval
    print(
        f"\nworkload: {args.days} days of {args.interval} s intervals = {n:,} per reading, "
        f"{ZONE}, sink {args.sink}, best of {args.repeats} runs\n"
    )
    print(f"{'measurement':<66} {'s':>7} {'peak MiB':>9} {'out MiB':>8}")
    print("-" * 93)
    for name, seconds, peak, size in rows:
        out = f"{size / 2**20:8.1f}" if size else f"{'':8}"
        peak_mib = f"{peak / 2**20:9.2f}" if peak else f"{'':9}"
        print(f"{name:<66} {seconds:>7.3f} {peak_mib} {out}")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--interval", type=int, default=300, help="seconds, dividing 86400")
    p.add_argument("--repeats", type=int, default=3, help="runs per row; the best is reported")
    p.add_argument("--sink", choices=("sha256", "null"), default="sha256")
    p.add_argument("--read", action="store_true", help="also time read_feed")
    p.add_argument("--validate", action="store_true", help="also time xmlschema validation")
    args = p.parse_args(argv)
    if args.days < 1 or args.repeats < 1 or args.interval < 1 or 86400 % args.interval:
        p.error("need --days >= 1, --repeats >= 1 and an --interval dividing 86400")
    facts = machine_facts(("xmlschema",))
    try:
        rows = run(args)
    except RuntimeError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print_report(facts, rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
