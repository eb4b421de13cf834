"""`gridmint provision check`: the commissioning report.

Owns: the checks an installer needs before leaving a site, each with a plain verdict:

1. the edge config is valid and the signing key is private;
2. every configured meter answers, with its live readings;
3. the system clock is synchronised (tokens are not minted on an unknown clock);
4. the broker accepts this device's TLS identity;
5. the cloud accepts a probe signed with the device's key (registered key, right deployment,
   clock agreement) and says whether the device is approved yet.

Why a probe and not a real token: a commissioning token would be a generation token for an
interval that is not over, and would enter the ledger. The probe is signed with the same key
over the same COSE envelope, but as a statement that can never be taken for a token.
"""

from __future__ import annotations

import asyncio
import ssl
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge.clocksync import ClockStatus, read_clock_status_async
from edge.keys import KeyFileError, load_key_file
from edge.meters import make_reader
from edge.settings import ConfigError, EdgeSettings, MeterSettings, load_settings
from mqttlink import BrokerUrlError, MqttLink, client_tls_context, parse_brokers
from protocol import statements
from provisioning.enroll import EnrollError, http_json

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass
class Check:
    """One line of the report."""

    name: str
    verdict: str
    detail: str
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class Report:
    """All checks; passes when none failed (warnings are for the installer to read)."""

    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.verdict != FAIL for c in self.checks)

    def add(self, name: str, verdict: str, detail: str, **values: float) -> Check:
        c = Check(name, verdict, detail, dict(values))
        self.checks.append(c)
        return c


async def _meters(settings: EdgeSettings, report: Report, timeout_s: float) -> None:
    for m in settings.meters:
        name = f"meter {m.name}"
        try:
            reader = make_reader(m)
        except (ValueError, OSError) as exc:
            report.add(name, FAIL, str(exc))
            continue
        try:
            poll = await asyncio.wait_for(reader.poll(time.time(), all_values=True), timeout_s)
        except Exception as exc:  # a dead adapter or a silent meter: say so, check the rest
            report.add(name, FAIL, f"no answer from {m.driver} at {_where(m)}: {exc}")
        else:
            missing = [ch.value for ch in m.channels if ch not in poll.readings]
            shown = {k: round(v, 3) for k, v in sorted(poll.values.items())[:8]}
            if missing:
                report.add(
                    name, FAIL, f"answers but gives no value for {', '.join(missing)}", **shown
                )
            else:
                totals = ", ".join(
                    f"{ch.value} {r.total_wh} Wh" for ch, r in sorted(poll.readings.items())
                )
                report.add(name, OK, f"{_where(m)}: {totals or 'values read'}", **shown)
        finally:
            await reader.close()


def _where(m: MeterSettings) -> str:
    if m.driver == "vedirect" or m.transport == "rtu":
        return f"{m.serial_port} unit {m.unit_id}"
    return f"{m.host}:{m.port} unit {m.unit_id}"


def _clock(status: ClockStatus, report: Report) -> None:
    if status.synchronized:
        since = status.seconds_since_sync
        report.add(
            "clock",
            OK,
            f"synchronised ({status.source}"
            + (f", last sync {since} s ago)" if since is not None else ")"),
        )
    else:
        report.add(
            "clock",
            FAIL,
            f"not synchronised ({status.source}): the agent holds tokens until it is; "
            "check the network and `timedatectl timesync-status`",
        )


async def _broker(settings: EdgeSettings, report: Report, timeout_s: float) -> None:
    try:
        addresses = parse_brokers(settings.broker_url)
    except BrokerUrlError as exc:
        report.add("broker", FAIL, str(exc))
        return
    tls: ssl.SSLContext | None = None
    if settings.tls_ca_file is not None:
        try:
            tls = client_tls_context(
                settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file
            )
        except (OSError, ValueError) as exc:
            report.add("broker", FAIL, f"TLS files: {exc}")
            return
    link = MqttLink(
        addresses,  # a cluster's list: the check passes when one of its nodes accepts
        f"check-{settings.device_id}",
        clean_session=True,
        tls_context=tls,
        reconnect_min_s=max(1, int(timeout_s)),
        reconnect_max_s=max(1, int(timeout_s)),
    )
    await link.start()
    try:
        if await link.wait_connected(timeout_s):
            address = link.address
            how = "TLS with this device's certificate" if tls is not None else "plain TCP"
            verdict = OK if address.tls else WARN
            note = "" if address.tls else " (not encrypted: fine on loopback only)"
            report.add("broker", verdict, f"{address} accepts {how}{note}")
        else:
            report.add(
                "broker",
                FAIL,
                f"{settings.broker_url} did not accept the connection within {timeout_s:g} s "
                "(certificate refused or revoked, wrong address, or a firewall)",
            )
    finally:
        await link.stop()


def _probe(
    settings: EdgeSettings, report: Report, timeout_s: float, now: Callable[[], float]
) -> None:
    if not settings.cloud_url:
        report.add("cloud", FAIL, "cloud_url is not set in the config (run provision enroll)")
        return
    try:
        key = load_key_file(settings.key_file)
    except KeyFileError as exc:
        report.add("cloud", FAIL, str(exc))
        return
    probe = statements.make_probe(
        settings.device_id, int(now() * 1000), key, settings.deployment.encode()
    )
    url = f"{settings.cloud_url.rstrip('/')}/api/v1/devices/{settings.device_id}/probe"
    try:
        answer = http_json("POST", url, {"statement": probe.hex()}, timeout_s)
    except EnrollError as exc:
        report.add("cloud", FAIL, f"signed probe refused: {exc}")
        return
    offset_s = int(answer.get("clock_offset_ms", 0)) / 1000
    if answer.get("status") == "approved":
        report.add(
            "cloud",
            OK,
            f"signed probe accepted; device approved at site {answer.get('site_id')}; "
            f"clock offset {offset_s:+.1f} s",
        )
    else:
        report.add(
            "cloud",
            WARN,
            f"signed probe accepted; device is {answer.get('status')}: its tokens are kept "
            "and count once an approver approves it",
        )


async def run_check(
    config: Path,
    *,
    timeout_s: float = 5.0,
    clock_status: Callable[[], ClockStatus] | None = None,
    now: Callable[[], float] = time.time,
) -> Report:
    """Run every check; never raises for a failed check (it is in the report)."""
    report = Report()
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        report.add("config", FAIL, str(exc))
        return report
    try:
        mode = settings.key_file.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            report.add("config", FAIL, f"{settings.key_file} is readable by others: chmod 600")
        else:
            report.add("config", OK, f"{config}: device {settings.device_id} at {settings.site_id}")
    except FileNotFoundError:
        report.add("config", FAIL, f"signing key {settings.key_file} is missing: run enroll")
    await _meters(settings, report, timeout_s)
    status = clock_status() if clock_status is not None else await read_clock_status_async()
    _clock(status, report)
    await _broker(settings, report, timeout_s)
    await asyncio.to_thread(_probe, settings, report, timeout_s * 2, now)
    return report
