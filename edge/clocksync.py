"""Is the Pi's clock synchronised? The answer sets each token's time quality (tq, ts).

Owns: clock-synchronisation detection and the rule from it to a record's `TimeQuality`.

A Raspberry Pi has no RTC. At boot Raspberry Pi OS restores the last saved time (fake-hwclock) and
systemd never lets the clock start before its clock-epoch (/usr/lib/clock-epoch or its build
date), so a plausible-looking time is not yet a correct one until NTP has synchronised it.

`read_clock_status()` asks, in order, and never raises:

1. `timedatectl show -p NTPSynchronized --value` ("yes"/"no"; timedated asks the kernel);
2. the kernel directly, adjtimex(2) through libc with modes = 0 (read only): the STA_UNSYNC bit in
   `status` (or a TIME_ERROR return) means unsynchronised; `maxerror` grows by 500 us per second
   after the last update, so maxerror / 500 bounds the seconds since the last sync;
3. /run/systemd/timesync/synchronized, which systemd-timesyncd touches at every sync: it exists
   only after a sync this boot (/run is emptied at boot) and its mtime is the last sync time;
   it counts as synchronised for SYNC_FILE_MAX_AGE_S (the kernel's own 16 s error limit).

The first source that answers gives `synchronized` and `source`; seconds since sync come from the
sync file when it exists, else from adjtimex's maxerror. Each source can be replaced through a
parameter, which is how the tests run without a real clock daemon.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from protocol.record import TimeQuality

log = logging.getLogger(__name__)

SYNC_FILE = Path("/run/systemd/timesync/synchronized")
CLOCK_EPOCH_FILE = Path("/usr/lib/clock-epoch")
# gridmint's build epoch: a clock reading before 2026 cannot be right (like systemd's clock-epoch).
BUILD_EPOCH = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

TIMEDATECTL_ARGS = ("show", "-p", "NTPSynchronized", "--value")
TIMEDATECTL_TIMEOUT_S = 2.0

# <sys/timex.h>
STA_UNSYNC = 0x0040
TIME_ERROR = 5
MAXERROR_GROWTH_US_PER_S = 500  # kernel: time_maxerror += MAXFREQ / NSEC_PER_USEC each second
NTP_PHASE_LIMIT_US = 16_000_000  # kernel marks the clock unsynchronised beyond 16 s of maxerror
# A sync file older than this: the kernel itself would have given up (16 s / 500 us per s).
SYNC_FILE_MAX_AGE_S = NTP_PHASE_LIMIT_US // MAXERROR_GROWTH_US_PER_S


@dataclass(frozen=True, slots=True)
class ClockStatus:
    """What the system says about its clock.

    `source` names where the answer came from: "timedatectl", "adjtimex", "timesyncd" or "none".
    `seconds_since_sync` is None when unknown (no sync seen this boot, or no source tells).
    """

    synchronized: bool
    source: str
    seconds_since_sync: int | None


@dataclass(frozen=True, slots=True)
class AdjtimexReading:
    """The parts of adjtimex(2) that matter here: return value, status bits, maxerror (us)."""

    state: int
    status: int
    maxerror_us: int


# Runs a command with a timeout and returns its stdout; raises on failure or timeout.
Runner = Callable[[Sequence[str], float], str]
AdjtimexReader = Callable[[], AdjtimexReading | None]
# Returns the mtime of a path, or None if it does not exist.
MtimeReader = Callable[[Path], float | None]


# Pure rules ---------------------------------------------------------------------------------------


def is_plausible_time(now: float, clock_epoch: float = BUILD_EPOCH) -> bool:
    """False for a clock reading before `clock_epoch`: such a clock was certainly never synced.

    The converse does not hold: a restored fake-hwclock time is plausible but stale.
    """
    return now >= clock_epoch


def parse_timedatectl(output: str) -> bool | None:
    """NTPSynchronized from `timedatectl show -p NTPSynchronized --value`; None if unreadable."""
    value = output.strip().lower()
    if value in ("yes", "true", "1"):
        return True
    if value in ("no", "false", "0"):
        return False
    return None


def interpret_adjtimex(reading: AdjtimexReading) -> tuple[bool, int | None]:
    """(synchronized, upper bound on seconds since the last sync) from an adjtimex reading.

    Mirrors systemd's ntp_synced(): unsynchronised if adjtimex failed, returned TIME_ERROR, has
    STA_UNSYNC set or maxerror beyond the kernel's 16 s phase limit.
    """
    if reading.state < 0:
        return False, None
    synced = (
        reading.state != TIME_ERROR
        and not reading.status & STA_UNSYNC
        and reading.maxerror_us < NTP_PHASE_LIMIT_US
    )
    if not synced:
        return False, None
    return True, max(0, reading.maxerror_us) // MAXERROR_GROWTH_US_PER_S


def time_quality_for(
    status: ClockStatus, now: float, clock_epoch: float = BUILD_EPOCH
) -> tuple[TimeQuality, tuple[str, int]]:
    """The record's (tq, ts) for a reading taken at `now` under `status`.

    - SYNCHRONIZED: the system says its clock is synchronised.
    - INFORMATIVE: not synchronised now, but it was this boot (the clock is drifting from a good
      time, e.g. the network went away hours ago).
    - UNKNOWN: never synchronised this boot (a fake-hwclock time) or before the clock epoch.
      Don't mint with it, or mark the tokens for re-timing (tokens.md section 4).

    ts is (source, seconds since the last sync, 0 when unknown).
    """
    since = status.seconds_since_sync
    ts = (status.source, since if since is not None else 0)
    if not is_plausible_time(now, clock_epoch):
        return TimeQuality.UNKNOWN, ts
    if status.synchronized:
        return TimeQuality.SYNCHRONIZED, ts
    if since is not None:
        return TimeQuality.INFORMATIVE, ts
    return TimeQuality.UNKNOWN, ts


# Sources ---------------------------------------------------------------------------------------


def run_command(args: Sequence[str], timeout_s: float) -> str:
    """Run a command without a shell; its stdout, or an exception (non-zero exit, timeout)."""
    proc = subprocess.run(  # noqa: S603  (fixed arguments, no shell)
        list(args), capture_output=True, text=True, timeout=timeout_s, check=True
    )
    return proc.stdout


def _timedatectl_command() -> list[str]:
    exe = shutil.which("timedatectl")
    if exe is None:
        raise FileNotFoundError("timedatectl not found")
    return [exe, *TIMEDATECTL_ARGS]


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (glibc's plain adjtimex symbol: long-sized fields on both
    # 32-bit armhf and 64-bit arm64), with the trailing padding the kernel reserves.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 16),
    ]


def read_adjtimex() -> AdjtimexReading | None:
    """Read the kernel's NTP state via libc adjtimex with modes = 0 (changes nothing)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    fn = libc.adjtimex
    fn.argtypes = [ctypes.POINTER(_Timex)]
    fn.restype = ctypes.c_int
    tx = _Timex()
    tx.modes = 0
    state = int(fn(ctypes.byref(tx)))
    if state < 0:
        log.debug("adjtimex failed: %s", os.strerror(ctypes.get_errno()))
    return AdjtimexReading(state=state, status=int(tx.status), maxerror_us=int(tx.maxerror))


def file_mtime(path: Path) -> float | None:
    """The file's modification time, or None if it does not exist."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


# Composition -----------------------------------------------------------------------------------


def read_clock_status(
    *,
    run: Runner | None = None,
    adjtimex: AdjtimexReader | None = read_adjtimex,
    sync_file: Path = SYNC_FILE,
    mtime: MtimeReader = file_mtime,
    now: Callable[[], float] = time.time,
) -> ClockStatus:
    """Ask timedatectl, then adjtimex, then timesyncd's sync file. Never raises.

    `run` runs timedatectl (default: the real command found on $PATH); pass `adjtimex=None` to
    skip the kernel query. Blocking for up to TIMEDATECTL_TIMEOUT_S: from asyncio use
    `read_clock_status_async()`.
    """
    sync_mtime: float | None = None
    try:
        sync_mtime = mtime(sync_file)
    except Exception as exc:
        log.debug("cannot stat %s: %s", sync_file, exc)
    since_file = None if sync_mtime is None else max(0, int(now() - sync_mtime))

    adj: AdjtimexReading | None = None
    adj_done = False

    def adj_reading() -> AdjtimexReading | None:
        nonlocal adj, adj_done
        if not adj_done and adjtimex is not None:
            adj_done = True
            try:
                adj = adjtimex()
            except Exception as exc:
                log.debug("adjtimex unavailable: %s", exc)
        return adj

    # 1. timedatectl
    synced: bool | None = None
    try:
        if run is None:
            out = run_command(_timedatectl_command(), TIMEDATECTL_TIMEOUT_S)
        else:
            out = run(["timedatectl", *TIMEDATECTL_ARGS], TIMEDATECTL_TIMEOUT_S)
        synced = parse_timedatectl(out)
    except Exception as exc:
        log.debug("timedatectl unavailable: %s", exc)
    if synced is not None:
        since = since_file
        if since is None and synced:
            reading = adj_reading()
            if reading is not None:
                since = interpret_adjtimex(reading)[1]
        return ClockStatus(synced, "timedatectl", since)

    # 2. adjtimex
    reading = adj_reading()
    if reading is not None and reading.state >= 0:
        adj_synced, adj_since = interpret_adjtimex(reading)
        since = since_file if since_file is not None else adj_since
        return ClockStatus(adj_synced, "adjtimex", since)

    # 3. systemd-timesyncd's marker file: a sync this boot; trusted while the kernel would be
    if since_file is not None:
        return ClockStatus(since_file <= SYNC_FILE_MAX_AGE_S, "timesyncd", since_file)
    return ClockStatus(False, "none", None)


async def read_clock_status_async() -> ClockStatus:
    """`read_clock_status()` in a worker thread, so the event loop never waits on timedatectl."""
    return await asyncio.to_thread(read_clock_status)


def clock_epoch(path: Path = CLOCK_EPOCH_FILE, floor: float = BUILD_EPOCH) -> float:
    """The earliest believable time: the later of systemd's clock-epoch file mtime and `floor`."""
    mt = file_mtime(path)
    return floor if mt is None else max(mt, floor)
