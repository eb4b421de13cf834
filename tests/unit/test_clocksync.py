"""Clock-sync detection: the pure rules, and the source order with injected sources."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from edge.clocksync import (
    BUILD_EPOCH,
    STA_UNSYNC,
    SYNC_FILE_MAX_AGE_S,
    TIME_ERROR,
    AdjtimexReader,
    AdjtimexReading,
    ClockStatus,
    MtimeReader,
    Runner,
    clock_epoch,
    file_mtime,
    interpret_adjtimex,
    is_plausible_time,
    parse_timedatectl,
    read_clock_status,
    time_quality_for,
)
from protocol.record import TimeQuality

NOW = BUILD_EPOCH + 200 * 86400.0
SYNCED = AdjtimexReading(state=0, status=0x2001, maxerror_us=50_000)  # STA_PLL | STA_NANO
UNSYNCED = AdjtimexReading(state=TIME_ERROR, status=STA_UNSYNC, maxerror_us=16_000_000)


class answers:
    """A timedatectl stand-in that prints `text` and records how it was called."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.calls: list[tuple[list[str], float]] = []

    def __call__(self, args: Sequence[str], timeout: float) -> str:
        self.calls.append((list(args), timeout))
        return self.text


def fails(exc: Exception) -> Runner:
    def run(args: Sequence[str], timeout: float) -> str:
        raise exc

    return run


def no_file(path: Path) -> float | None:
    return None


def file_at(mtime: float) -> MtimeReader:
    def read(path: Path) -> float | None:
        return mtime

    return read


def boom() -> AdjtimexReading | None:
    raise OSError("no libc here")


# Pure rules --------------------------------------------------------------------------------------


def test_build_epoch_is_2026() -> None:
    assert BUILD_EPOCH == 1767225600


@pytest.mark.parametrize(
    ("now", "epoch", "plausible"),
    [
        (BUILD_EPOCH - 1, BUILD_EPOCH, False),
        (0.0, BUILD_EPOCH, False),  # the Pi's 1970 before fake-hwclock
        (1735689600.0, BUILD_EPOCH, False),  # 2025-01-01: before gridmint existed
        (BUILD_EPOCH, BUILD_EPOCH, True),
        (NOW, BUILD_EPOCH, True),
        (NOW, NOW + 1, False),  # a later clock-epoch file moves the floor up
    ],
)
def test_is_plausible_time(now: float, epoch: float, plausible: bool) -> None:
    assert is_plausible_time(now, epoch) is plausible


@pytest.mark.parametrize(
    ("out", "expected"),
    [("yes\n", True), ("no\n", False), (" YES ", True), ("", None), ("maybe", None)],
)
def test_parse_timedatectl(out: str, expected: bool | None) -> None:
    assert parse_timedatectl(out) is expected


@pytest.mark.parametrize(
    ("reading", "expected"),
    [
        (SYNCED, (True, 100)),  # 50 ms maxerror / 500 us per s
        (AdjtimexReading(0, 0, 0), (True, 0)),
        (UNSYNCED, (False, None)),
        (AdjtimexReading(0, STA_UNSYNC, 1000), (False, None)),  # the status bit alone
        (AdjtimexReading(TIME_ERROR, 0, 1000), (False, None)),
        (AdjtimexReading(0, 0, 16_000_000), (False, None)),  # beyond the phase limit
        (AdjtimexReading(-1, 0, 0), (False, None)),  # the call failed
    ],
)
def test_interpret_adjtimex(reading: AdjtimexReading, expected: tuple[bool, int | None]) -> None:
    assert interpret_adjtimex(reading) == expected


@pytest.mark.parametrize(
    ("status", "now", "tq", "ts"),
    [
        (ClockStatus(True, "timedatectl", 40), NOW, TimeQuality.SYNCHRONIZED, ("timedatectl", 40)),
        (ClockStatus(True, "timedatectl", None), NOW, TimeQuality.SYNCHRONIZED, ("timedatectl", 0)),
        # synced earlier this boot, drifting since
        (ClockStatus(False, "adjtimex", 40000), NOW, TimeQuality.INFORMATIVE, ("adjtimex", 40000)),
        # never synced this boot: a fake-hwclock time
        (ClockStatus(False, "timedatectl", None), NOW, TimeQuality.UNKNOWN, ("timedatectl", 0)),
        (ClockStatus(False, "none", None), NOW, TimeQuality.UNKNOWN, ("none", 0)),
        # whatever the daemons say, a time before the epoch is wrong
        (ClockStatus(True, "timedatectl", 5), BUILD_EPOCH - 60, TimeQuality.UNKNOWN, None),
    ],
)
def test_time_quality_for(
    status: ClockStatus, now: float, tq: TimeQuality, ts: tuple[str, int] | None
) -> None:
    quality, source = time_quality_for(status, now)
    assert quality is tq
    if ts is not None:
        assert source == ts


# Source order ------------------------------------------------------------------------------------


def test_timedatectl_answers_first() -> None:
    run = answers("yes\n")
    st = read_clock_status(run=run, adjtimex=lambda: UNSYNCED, mtime=no_file, now=lambda: NOW)
    assert st == ClockStatus(True, "timedatectl", None)
    [(args, timeout)] = run.calls
    assert args == ["timedatectl", "show", "-p", "NTPSynchronized", "--value"]
    assert 0 < timeout <= 5


def test_timedatectl_synced_takes_age_from_the_sync_file() -> None:
    st = read_clock_status(
        run=answers("yes"), adjtimex=boom, mtime=file_at(NOW - 90.4), now=lambda: NOW
    )
    assert st == ClockStatus(True, "timedatectl", 90)


def test_timedatectl_synced_takes_age_bound_from_adjtimex_without_sync_file() -> None:
    st = read_clock_status(run=answers("yes"), adjtimex=lambda: SYNCED, mtime=no_file)
    assert st == ClockStatus(True, "timedatectl", 100)


def test_timedatectl_no() -> None:
    st = read_clock_status(run=answers("no"), adjtimex=lambda: SYNCED, mtime=no_file)
    assert st == ClockStatus(False, "timedatectl", None)


@pytest.mark.parametrize(
    "failure",
    [
        FileNotFoundError("timedatectl"),
        subprocess.TimeoutExpired(["timedatectl"], 2.0),
        subprocess.CalledProcessError(1, ["timedatectl"], stderr="Failed to connect to bus"),
    ],
)
def test_falls_back_to_adjtimex(failure: Exception) -> None:
    st = read_clock_status(run=fails(failure), adjtimex=lambda: SYNCED, mtime=no_file)
    assert st == ClockStatus(True, "adjtimex", 100)
    st = read_clock_status(run=fails(failure), adjtimex=lambda: UNSYNCED, mtime=no_file)
    assert st == ClockStatus(False, "adjtimex", None)


def test_unreadable_timedatectl_output_falls_back() -> None:
    st = read_clock_status(run=answers("\n"), adjtimex=lambda: UNSYNCED, mtime=no_file)
    assert st.source == "adjtimex"


def test_adjtimex_unsynced_but_synced_this_boot_keeps_the_file_age() -> None:
    st = read_clock_status(
        run=fails(OSError()),
        adjtimex=lambda: UNSYNCED,
        mtime=file_at(NOW - 40000),
        now=lambda: NOW,
    )
    assert st == ClockStatus(False, "adjtimex", 40000)
    assert time_quality_for(st, NOW)[0] is TimeQuality.INFORMATIVE


@pytest.mark.parametrize("adjtimex", [boom, lambda: None, lambda: AdjtimexReading(-1, 0, 0)])
def test_falls_back_to_the_sync_file(adjtimex: AdjtimexReader) -> None:
    st = read_clock_status(
        run=fails(OSError()), adjtimex=adjtimex, mtime=file_at(NOW - 300), now=lambda: NOW
    )
    assert st == ClockStatus(True, "timesyncd", 300)
    old = NOW - SYNC_FILE_MAX_AGE_S - 1
    st = read_clock_status(
        run=fails(OSError()), adjtimex=adjtimex, mtime=file_at(old), now=lambda: NOW
    )
    assert st == ClockStatus(False, "timesyncd", SYNC_FILE_MAX_AGE_S + 1)


def test_nothing_answers() -> None:
    def broken_stat(path: Path) -> float | None:
        raise PermissionError(path)

    st = read_clock_status(run=fails(OSError()), adjtimex=None, mtime=broken_stat)
    assert st == ClockStatus(False, "none", None)


def test_sync_file_mtime_from_a_real_file(tmp_path: Path) -> None:
    marker = tmp_path / "synchronized"
    assert file_mtime(marker) is None
    marker.touch()
    os.utime(marker, (NOW - 120, NOW - 120))
    st = read_clock_status(run=fails(OSError()), adjtimex=None, sync_file=marker, now=lambda: NOW)
    assert st == ClockStatus(True, "timesyncd", 120)


def test_clock_epoch_file(tmp_path: Path) -> None:
    epoch_file = tmp_path / "clock-epoch"
    assert clock_epoch(epoch_file) == BUILD_EPOCH
    epoch_file.touch()
    os.utime(epoch_file, (NOW, NOW))
    assert clock_epoch(epoch_file) == NOW
    os.utime(epoch_file, (1000.0, 1000.0))  # an old systemd build never lowers the floor
    assert clock_epoch(epoch_file) == BUILD_EPOCH


def test_the_real_system_never_raises() -> None:
    st = read_clock_status()
    assert isinstance(st, ClockStatus)
    assert st.source in {"timedatectl", "adjtimex", "timesyncd", "none"}


async def test_async_variant() -> None:
    from edge.clocksync import read_clock_status_async

    assert isinstance(await read_clock_status_async(), ClockStatus)
