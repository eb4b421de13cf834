"""`gridmint provision ...`: installer commands on the Pi (mounted by gridmint/cli.py).

Owns: the `scan` command (argument checking, a progress bar over the probes, a table or JSON of
what was found, `--write` into the edge TOML). The probing itself is provisioning/scan.py.
Runs on its own too: `python -m provisioning.cli scan --help`.

Output: progress and messages go to stderr; the table (or with `--json` one JSON object, the
last line) goes to stdout. A bad argument prints one plain line and exits 1; finding nothing is
not an error (exit 0, and it says so).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gridmint.console import lazy_console
from provisioning.scan_defaults import (
    DEFAULT_BAUDS,
    DEFAULT_SERIAL_GLOBS,
    DEFAULT_SUNSPEC_UNITS,
    DEFAULT_TCP_UNITS,
)

if TYPE_CHECKING:  # the scan pulls in pymodbus: imported by the commands that probe
    from rich.table import Table

    from provisioning.scan import ScanOptions, ScanReport

provision_app = typer.Typer(
    help="Installer tools: find devices, enroll, check, install the service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

out = lazy_console()
err = lazy_console(stderr=True, soft_wrap=True)


@provision_app.callback()
def _provision() -> None:
    """Installer tools: find devices and add them to the edge config."""


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    return typer.Exit(1)


def _options(
    bauds: str,
    units: str,
    sunspec_units: str,
    tcp_units: str,
    parity: str,
    timeout: float,
    tcp_timeout: float,
    vedirect: bool,
    thorough: bool,
    all_framings: bool,
) -> ScanOptions:
    from provisioning.scan import ScanOptions, parse_int_list

    try:
        baud_list = parse_int_list(bauds, "--bauds", 300, 4_000_000)
        unit_list = parse_int_list(units, "--units", 1, 247)
        sunspec_list = parse_int_list(sunspec_units, "--sunspec-units", 1, 247)
        tcp_list = parse_int_list(tcp_units, "--tcp-units", 1, 247)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if not baud_list:
        raise _fail("--bauds: give at least one baud rate, e.g. 9600,19200")
    if not unit_list and not sunspec_list:
        raise _fail("--units: give at least one unit id, e.g. 1-10")
    parities = tuple(dict.fromkeys(p.strip().upper() for p in parity.split(",") if p.strip()))
    if not parities or any(p not in ("N", "E", "O") for p in parities):
        raise _fail(f"--parity: expected N, E, O or a list like N,E; got {parity!r}")
    if not 0 < timeout <= 10 or not 0 < tcp_timeout <= 30:
        raise _fail("--timeout must be 0..10 s and --tcp-timeout 0..30 s (and above 0)")
    return ScanOptions(
        bauds=baud_list,
        parities=parities,
        units=unit_list,
        sunspec_units=sunspec_list,
        tcp_units=tcp_list or DEFAULT_TCP_UNITS,
        timeout_s=timeout,
        tcp_timeout_s=tcp_timeout,
        vedirect=vedirect,
        presence_probes_serial=0 if thorough else 3,
        presence_probes_tcp=0 if thorough else 4,
        all_framings=all_framings,
    )


def _table(report: ScanReport) -> Table:
    from rich.table import Table

    from provisioning.scan import suggested_name

    table = Table(title=f"Devices found ({len(report.found)})", title_justify="left")
    for column in ("name", "device", "kind", "driver / map", "where", "line", "unit", "serial"):
        table.add_column(column, overflow="fold")
    table.add_column("details", overflow="fold", max_width=40)
    for found in report.found:
        line = f"{found.baudrate} 8{found.parity}1" if found.baudrate else ""
        details = ", ".join(f"{k}={v}" for k, v in found.details.items() if k != "note")
        note = found.details.get("note")
        if note:
            details = f"{details}; {note}" if details else str(note)
        table.add_row(
            suggested_name(found),
            found.description,
            found.kind.replace("_", " "),
            found.register_map or found.driver,
            found.serial_port or f"{found.host}:{found.port}",
            line,
            "" if found.unit_id is None else str(found.unit_id),
            found.serial_number,
            details,
        )
    return table


@provision_app.command("scan")
def scan_command(
    port: Annotated[
        list[str] | None,
        typer.Option(
            "--port",
            help="serial port to probe (repeatable); default: " + ", ".join(DEFAULT_SERIAL_GLOBS),
        ),
    ] = None,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="LAN host[:port] to probe over Modbus TCP (repeatable)"),
    ] = None,
    bauds: Annotated[str, typer.Option(help="baud rates, in probing order")] = ",".join(
        str(b) for b in DEFAULT_BAUDS
    ),
    units: Annotated[str, typer.Option(help="unit ids on serial lines, e.g. 1-10,16")] = "1-10",
    sunspec_units: Annotated[
        str, typer.Option(help="extra serial unit ids probed for SunSpec only ('' for none)")
    ] = ",".join(str(u) for u in DEFAULT_SUNSPEC_UNITS),
    tcp_units: Annotated[str, typer.Option(help="unit ids probed on LAN hosts")] = ",".join(
        str(u) for u in DEFAULT_TCP_UNITS
    ),
    parity: Annotated[str, typer.Option(help="parities to probe: N, or N,E")] = "N",
    timeout: Annotated[float, typer.Option(help="seconds to wait for a serial answer")] = 0.25,
    tcp_timeout: Annotated[float, typer.Option(help="seconds to wait for a TCP answer")] = 1.0,
    vedirect: Annotated[
        bool, typer.Option("--vedirect/--no-vedirect", help="listen for VE.Direct first")
    ] = True,
    thorough: Annotated[
        bool, typer.Option(help="try every rule on every unit, even silent ones (slow)")
    ] = False,
    all_framings: Annotated[
        bool, typer.Option(help="keep probing other baud rates after one found devices")
    ] = False,
    write: Annotated[
        Path | None, typer.Option("--write", help="add the devices found to this edge TOML")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log Modbus traffic")] = False,
) -> None:
    """Probe serial ports and LAN hosts for supported devices and print what answers."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from provisioning.scan import (
        ConfigWriteError,
        ScanReport,
        default_serial_ports,
        parse_host,
        scan,
        write_config,
    )

    logging.getLogger("pymodbus").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    options = _options(
        bauds,
        units,
        sunspec_units,
        tcp_units,
        parity,
        timeout,
        tcp_timeout,
        vedirect,
        thorough,
        all_framings,
    )
    hosts: list[tuple[str, int]] = []
    for text in host or []:
        try:
            hosts.append(parse_host(text))
        except ValueError as exc:
            raise _fail(f"--host: {exc}") from None
    ports = list(port) if port else default_serial_ports()
    if not ports and not hosts:
        err.print(
            "nothing to scan: no serial ports found ("
            + ", ".join(DEFAULT_SERIAL_GLOBS)
            + ") and no --host given"
        )
        if json_out:
            typer.echo(json.dumps(ScanReport().to_json()))
        return
    targets = ", ".join([*ports, *(f"{h}:{p}" for h, p in hosts)])
    err.print(f"scanning {targets}", highlight=False)

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("probing", total=None)

        def progress(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=label[:60])

        try:
            report = asyncio.run(scan(ports, hosts, options, progress))
        except KeyboardInterrupt:
            err.print("scan interrupted")
            raise typer.Exit(130) from None

    written = None
    if write is not None and report.found:
        try:
            written = write_config(write, report.found)
        except ConfigWriteError as exc:
            raise _fail(str(exc)) from None

    if json_out:
        data = report.to_json()
        if written is not None:
            data["written"] = {
                "path": str(write),
                "added": written.added,
                "skipped": [{"where": f.where, "reason": r} for f, r in written.skipped],
            }
        typer.echo(json.dumps(data))
    elif report.found:
        out.print(_table(report))
    for issue in report.issues:
        style = {"error": "red", "warning": "yellow"}.get(issue.level, "dim")
        err.print(f"[{style}]{issue.level}:[/] {issue.where}: {issue.message}", highlight=False)
    if not report.found:
        err.print(
            f"no supported device found ({report.probes} probes in {report.elapsed_s:.1f} s); "
            "check wiring, power, termination and the line settings (--bauds, --parity)"
        )
        if write is not None:
            err.print(f"{write} not changed")
        return
    err.print(f"{len(report.found)} device(s) found in {report.elapsed_s:.1f} s")
    if written is not None:
        if written.added:
            verb = "created" if written.created else "updated"
            err.print(f"{verb} {write}: added {', '.join(written.added)}", highlight=False)
        for found, reason in written.skipped:
            err.print(f"skipped {found.description}: {reason}", highlight=False)
        if not written.added:
            err.print(f"{write} not changed")


ConfigOpt = Annotated[Path, typer.Option("--config", help="the edge TOML file")]


@provision_app.command("enroll")
def enroll_command(
    cloud: Annotated[str, typer.Option("--cloud", help="the aggregator's URL, https://...")],
    claim: Annotated[str, typer.Option("--claim", help="the claim code the installer was given")],
    config: ConfigOpt = Path("/etc/gridmint/edge.toml"),
    capacity_w: Annotated[
        int, typer.Option("--capacity-w", min=1, max=10_000_000, help="rated power, W")
    ] = 5000,
    device_id: Annotated[
        str | None, typer.Option("--device-id", help="proposed id (default: assigned)")
    ] = None,
    zone: Annotated[str, typer.Option(help="grid / market zone")] = "",
    owner: Annotated[
        str | None, typer.Option(help="give the written files to this user (the service user)")
    ] = None,
) -> None:
    """Join a site: create the device's keys, enroll with the claim code, write config and keys."""
    from provisioning.enroll import EnrollError, enroll

    with err.status("enrolling with the cloud..."):
        try:
            done = enroll(
                config,
                cloud,
                claim,
                capacity_w=capacity_w,
                device_id=device_id,
                zone=zone,
                owner=owner,
            )
        except EnrollError as exc:
            raise _fail(str(exc)) from None
    out.print(
        f"enrolled as [bold]{done.device_id}[/] at site {done.site_id} ({done.status}); "
        f"broker {done.broker_url}",
        highlight=False,
    )
    for f in done.files:
        err.print(f"wrote {f}", highlight=False)
    if done.status != "approved":
        err.print("an approver must approve this device; its tokens are kept until then")


@provision_app.command("check")
def check_command(
    config: ConfigOpt = Path("/etc/gridmint/edge.toml"),
    timeout: Annotated[float, typer.Option(min=0.5, max=60, help="seconds per check")] = 5.0,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
) -> None:
    """Commissioning report: meters, clock, broker over TLS, a signed probe to the cloud."""
    from rich.table import Table

    from provisioning.check import FAIL, OK, run_check

    with err.status("checking..."):
        report = asyncio.run(run_check(config, timeout_s=timeout))
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "passed": report.passed,
                    "checks": [
                        {
                            "name": c.name,
                            "verdict": c.verdict,
                            "detail": c.detail,
                            "values": c.values,
                        }
                        for c in report.checks
                    ],
                }
            )
        )
    else:
        table = Table(title="commissioning check")
        for col in ("check", "result", "detail"):
            table.add_column(col)
        colour = {OK: "green", FAIL: "red"}
        for c in report.checks:
            table.add_row(c.name, f"[{colour.get(c.verdict, 'yellow')}]{c.verdict}[/]", c.detail)
        out.print(table)
    if not report.passed:
        failed = [c for c in report.checks if c.verdict == FAIL]
        raise _fail("; ".join(f"{c.name}: {c.detail}" for c in failed))
    err.print("commissioning check passed")


@provision_app.command("install")
def install_command(
    root: Annotated[Path, typer.Option(help="install under this root (a Pi: /)")] = Path("/"),
    config: Annotated[str, typer.Option(help="config path the service runs with")] = (
        "/etc/gridmint/edge.toml"
    ),
    executable: Annotated[str, typer.Option(help="the gridmint executable")] = (
        "/opt/gridmint/.venv/bin/gridmint"
    ),
    user: Annotated[str, typer.Option(help="the service user")] = "gridmint",
    no_reload: Annotated[
        bool, typer.Option("--no-reload", help="write files only; print the reload commands")
    ] = False,
) -> None:
    """Install the systemd unit and the udev rules (stable /dev/gridmint-rs485-* names)."""
    from provisioning.install import InstallError, install

    try:
        done = install(root, config=config, executable=executable, user=user, reload=not no_reload)
    except InstallError as exc:
        raise _fail(str(exc)) from None
    for f in done.files:
        out.print(f"wrote {f}", highlight=False)
    for c in done.commands:
        out.print(f"ran   {c}", highlight=False)
    if done.skipped_commands:
        err.print("then run:", highlight=False)
        for c in done.skipped_commands:
            err.print(f"  sudo {c}", highlight=False)


@provision_app.command("rotate-key")
def rotate_key_command(config: ConfigOpt = Path("/etc/gridmint/edge.toml")) -> None:
    """Replace the signing key: the cloud registers the new key, signed by the current one."""
    from provisioning.rotate import RotateError, rotate_signing_key

    try:
        done = rotate_signing_key(config)
    except RotateError as exc:
        raise _fail(str(exc)) from None
    until = (
        datetime.fromtimestamp(done.previous_valid_until, UTC).isoformat()
        if done.previous_valid_until is not None
        else "open"
    )
    out.print(
        f"new signing key {done.new_kid}; key {done.previous_kid} verifies intervals ending "
        f"until {until}",
        highlight=False,
    )
    err.print("restart the agent to sign with it: sudo systemctl restart gridmint-edge")


@provision_app.command("renew-cert")
def renew_cert_command(config: ConfigOpt = Path("/etc/gridmint/edge.toml")) -> None:
    """Renew the TLS client certificate for a new key, before the current one expires."""
    from provisioning.rotate import RotateError, renew_certificate

    try:
        expires = renew_certificate(config)
    except RotateError as exc:
        raise _fail(str(exc)) from None
    out.print(f"new certificate valid until {expires.isoformat()}", highlight=False)
    err.print("restart the agent to use it: sudo systemctl restart gridmint-edge")


if __name__ == "__main__":
    provision_app()
