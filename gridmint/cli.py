"""The `gridmint` command: demo, edge agent, cloud aggregator, simulators, token tools.

Owns: argument parsing and turning errors into plain messages with an exit code. Every command
that runs long shows progress; every expected failure prints one line, never a traceback.

Imports at module level stay within the base install (typer, rich, protocol/): each command
imports what it needs itself, so `gridmint edge run` does not load the verifier or pydantic, and
a Pi with `gridmint[edge]` or an aggregator with `gridmint[cloud]` can run every command its
extra covers. A command whose extra is missing ends in `main()`, which names the extra to
install (`EXTRAS`, `missing_extra`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import string
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from gridmint.console import lazy_console
from protocol.clock import Clock, SimClock, SystemClock
from provisioning.cli import provision_app

app = typer.Typer(
    help="gridmint: signed kWh tokens from rooftop solar, aggregated into a virtual power plant.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
edge_app = typer.Typer(help="The Raspberry Pi edge agent.", no_args_is_help=True)
cloud_app = typer.Typer(help="The cloud aggregator.", no_args_is_help=True)
sim_app = typer.Typer(help="Device simulators.", no_args_is_help=True)
token_app = typer.Typer(help="Inspect signed interval records.", no_args_is_help=True)
app.add_typer(edge_app, name="edge")
app.add_typer(cloud_app, name="cloud")
app.add_typer(sim_app, name="sim")
app.add_typer(token_app, name="token")
app.add_typer(provision_app, name="provision")

console = lazy_console()
err = lazy_console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print a plain error and return the exit to raise."""
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pymodbus logs every timeout with a frame dump; the agent reports unavailable meters itself.
    logging.getLogger("pymodbus").setLevel(logging.INFO if verbose else logging.CRITICAL)


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"--start {value!r} is not an ISO 8601 time like 2026-06-01T10:00Z") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _clock(speed: float, start: str | None, origin: float | None) -> Clock:
    if speed <= 0:
        raise fail("--speed must be positive")
    if speed == 1.0 and start is None:
        return SystemClock()
    begin = _parse_time(start) or datetime.now(UTC)
    clock = SimClock.starting_at(begin.timestamp(), speed)
    if origin is not None:
        clock = SimClock(origin_sim=begin.timestamp(), speed=speed, origin_real=origin)
    return clock


def _run_until_signal(main: Any) -> Any:
    """Run a coroutine factory taking a stop event; Ctrl-C or SIGTERM set the event."""

    async def runner() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return asyncio.run(runner())


SpeedOpt = Annotated[float, typer.Option(help="simulated clock speed (1 = real time)")]
StartOpt = Annotated[
    str | None, typer.Option(help="simulated clock start, ISO 8601 UTC (with --speed)")
]
OriginOpt = Annotated[
    float | None,
    typer.Option(
        help="real Unix time at which the simulated clock reads --start "
        "(give every process the same value to share one clock)"
    ),
]


@app.command()
def demo(
    homes: Annotated[int, typer.Option(min=1, max=200, help="number of simulated homes")] = 3,
    speed: Annotated[
        float, typer.Option(min=1.0, help="simulated seconds per real second")
    ] = 120.0,
    duration: Annotated[
        float | None, typer.Option(min=1.0, help="real seconds to run (default: until Ctrl-C)")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="print the summary as one JSON object, last on stdout")
    ] = False,
    broker: Annotated[
        str | None,
        typer.Option(
            help="use this broker (mqtt://host:port, or a comma-separated failover list), "
            "not an embedded one"
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="dashboard HTTP port (0: any free port)")] = 8000,
    start: StartOpt = None,
    interval: Annotated[int, typer.Option(help="interval length in seconds: 300 or 900")] = 300,
    data_dir: Annotated[
        Path | None, typer.Option(help="keep the demo's databases and keys here")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run simulated homes, edge agents, a broker and the cloud in one process."""
    _setup_logging(verbose)
    from gridmint.demo import DemoOptions, default_start, print_summary, run_demo
    from mqttlink import BrokerUrlError, parse_brokers

    if interval not in (300, 900):
        raise fail("--interval must be 300 or 900")
    if broker is not None:
        try:
            parse_brokers(broker)
        except BrokerUrlError as exc:
            raise fail(str(exc)) from None
    opts = DemoOptions(
        homes=homes,
        speed=speed,
        duration_s=duration,
        start=_parse_time(start) or default_start(),
        broker_url=broker,
        http_port=port,
        data_dir=data_dir,
        interval_s=interval,
        as_json=json_out,
    )
    from rich.console import Console

    out = Console(stderr=True) if json_out else Console()
    try:
        summary = _run_until_signal(lambda stop: run_demo(opts, out, stop))
    except OSError as exc:
        raise fail(f"demo could not start: {exc}") from None
    print_summary(summary, out, json_out)


@edge_app.command("run")
def edge_run(
    config: Annotated[Path, typer.Option(help="edge agent TOML file")],
    speed: SpeedOpt = 1.0,
    start: StartOpt = None,
    origin: OriginOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the edge agent: read meters, mint signed interval tokens, publish them."""
    _setup_logging(verbose)
    import sqlite3

    from edge.agent import EdgeAgent
    from edge.drivers.register_map import RegisterMapError
    from edge.keys import KeyFileError, load_or_create_key
    from edge.meters import make_reader
    from edge.outbox import Outbox
    from edge.settings import ConfigError, load_settings
    from mqttlink import BrokerUrlError, parse_brokers

    try:
        settings = load_settings(config)
        parse_brokers(settings.broker_url)
        key = load_or_create_key(settings.key_file)
    except (ConfigError, KeyFileError, BrokerUrlError, RegisterMapError, ValueError) as exc:
        raise fail(str(exc)) from None
    clock = _clock(speed, start, origin)

    async def main(stop: asyncio.Event) -> None:
        try:
            readers = [make_reader(m) for m in settings.meters]
        except (RegisterMapError, ValueError, OSError) as exc:
            raise fail(str(exc)) from None
        try:
            outbox = await Outbox.open(settings.state_db)
            await outbox.counters()
        except (sqlite3.Error, OSError) as exc:
            # A full or read-only SD card: a plain message and exit code 1 (systemd restarts
            # the agent), not a traceback.
            raise fail(f"cannot open the state database {settings.state_db}: {exc}") from None
        panel = None
        if settings.gpio is not None:
            from edge.gpio import StatusPanel

            g = settings.gpio
            try:
                panel = StatusPanel(
                    g.led_pin,
                    g.button_pin,
                    g.relays,
                    long_press_s=g.long_press_s,
                    relay_active_high=g.relay_active_high,
                    loop=asyncio.get_running_loop(),
                    on_show_status=lambda: err.print(json.dumps(agent.status(0))),
                )
            except Exception as exc:  # no GPIO on this machine: run without the panel
                err.print(f"[yellow]warning:[/] GPIO unavailable, running without LED: {exc}")
        from edge.actuators import make_actuators, prepare_actuators

        try:
            # The meters' `controls` and gpio.dispatch_relays (edge/actuators.py); a device
            # without the SunSpec model a control needs is dropped with a warning.
            actuators = await prepare_actuators(make_actuators(settings, readers, panel))
        except ValueError as exc:
            await outbox.close()
            raise fail(f"dispatch controls: {exc}") from None
        try:
            agent = EdgeAgent(
                settings, key, clock, readers, outbox, panel=panel, actuators=actuators
            )
        except OSError as exc:  # ssl.SSLError is an OSError: a missing or bad TLS file
            await outbox.close()
            raise fail(f"cannot set up the broker connection: {exc}") from None
        typer.echo(  # plain: rich is not imported by the running agent
            f"edge agent {settings.device_id}: {len(readers)} meter(s), broker "
            f"{settings.broker_url}; Ctrl-C stops",
            err=True,
        )
        try:
            await agent.run(stop)
        except (sqlite3.Error, OSError) as exc:
            if agent.started.is_set():
                raise
            # resume() writes the boot counter before anything is minted; a disk with no room
            # for it stops the agent with a plain message (systemd restarts it).
            raise fail(f"cannot write the state database {settings.state_db}: {exc}") from None
        finally:
            await outbox.close()

    _run_until_signal(main)


@edge_app.command("pubkey")
def edge_pubkey(
    key_file: Annotated[Path, typer.Option(help="device key file (created if missing)")],
) -> None:
    """Print the device's public key and key id (hex), creating the key if needed."""
    from edge.keys import KeyFileError, load_or_create_key
    from protocol import cose

    try:
        key = load_or_create_key(key_file)
    except KeyFileError as exc:
        raise fail(str(exc)) from None
    pub = cose.public_bytes(key.public_key())
    print(json.dumps({"public_key": pub.hex(), "kid": cose.key_id(pub).hex()}))


def _cloud_settings(env_file: Path | None, overrides: dict[str, Any]) -> Any:
    """CloudSettings from the environment, an optional env file and flags; a plain error."""
    from pydantic import ValidationError

    from cloud.settings import CloudSettings

    if env_file is not None and not env_file.is_file():
        raise fail(f"--env-file {env_file} does not exist")
    try:
        return CloudSettings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise fail(f"settings: {where}: {first['msg']}") from None


@cloud_app.command("serve")
def cloud_serve(
    database_url: Annotated[
        str | None, typer.Option(help="sqlite:///file or postgresql://...")
    ] = None,
    broker: Annotated[
        str | None, typer.Option(help="mqtt://host:port, or a comma-separated failover list")
    ] = None,
    host: Annotated[str | None, typer.Option(help="HTTP listen address")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port")] = None,
    deployment: Annotated[str | None, typer.Option(help="deployment id")] = None,
    speed: SpeedOpt = 1.0,
    start: StartOpt = None,
    origin: OriginOpt = None,
    env_file: Annotated[
        Path | None, typer.Option(help="GRIDMINT_CLOUD_* settings file (from `cloud pki`)")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the aggregator: MQTT ingest, storage, API and dashboard."""
    _setup_logging(verbose)
    from cloud.runtime import CloudRuntime
    from cloud.storage.store import StorageUrlError
    from mqttlink import BrokerUrlError, parse_brokers

    overrides = {
        k: v
        for k, v in {
            "database_url": database_url,
            "broker_url": broker,
            "http_host": host,
            "http_port": port,
            "deployment": deployment,
        }.items()
        if v is not None
    }
    settings = _cloud_settings(env_file, overrides)
    try:
        parse_brokers(settings.broker_url)
    except BrokerUrlError as exc:
        raise fail(str(exc)) from None
    clock = _clock(speed, start, origin)

    async def main(stop: asyncio.Event) -> None:
        runtime = CloudRuntime(settings, clock)
        try:
            await runtime.start()
        except StorageUrlError as exc:
            raise fail(str(exc)) from None
        except OSError as exc:
            await runtime.stop()
            raise fail(f"cannot serve: {exc}") from None
        err.print(f"aggregator: {runtime.url}/  broker {settings.broker_url}; Ctrl-C stops")
        try:
            await stop.wait()
        finally:
            await runtime.stop()

    _run_until_signal(main)


@cloud_app.command("pki")
def cloud_pki(
    directory: Annotated[Path, typer.Option("--dir", help="folder for the CA, certs and configs")],
    host: Annotated[
        list[str], typer.Option(help="broker host name or IP devices connect to (repeatable)")
    ],
    port: Annotated[int, typer.Option(min=1, max=65535, help="TLS listener port")] = 8883,
    run_as_user: Annotated[
        str | None, typer.Option(help="Mosquitto `user` (default: the package's)")
    ] = None,
) -> None:
    """Create the device CA and the TLS broker's files; prints how to start both."""
    from cloud.broker_setup import setup_broker
    from cloud.pki import PkiError

    try:
        files = setup_broker(
            directory, hosts=host, port=port, now=datetime.now(UTC), run_as_user=run_as_user
        )
    except (PkiError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"device CA:      {files.ca_cert}")
    typer.echo(f"broker config:  {files.mosquitto_conf}")
    typer.echo(f"aggregator env: {files.env_file}")
    typer.echo(f"start the broker:     mosquitto -c {files.mosquitto_conf}")
    typer.echo(f"start the aggregator: gridmint cloud serve --env-file {files.env_file}")


@cloud_app.command("nats-config")
def cloud_nats_config(
    directory: Annotated[Path, typer.Option("--dir", help="folder for the nodes' configs")],
    host: Annotated[
        list[str],
        typer.Option(help="one host per node (3), or one host for three nodes on it"),
    ],
    base_port: Annotated[
        int, typer.Option(min=1, max=65000, help="first port when all nodes share one host")
    ] = 14220,
    store_dir: Annotated[
        Path | None, typer.Option(help="JetStream folder on each node (default: in --dir)")
    ] = None,
) -> None:
    """Write nats-server configs for a 3-node broker cluster with MQTT (stream_replicas 3);
    prints how to start each node and the failover broker_url for edges and the aggregator."""
    from cloud.nats_config import broker_url_list, cluster_nodes, render_nats_node

    if len(host) not in (1, 3):
        raise fail("give --host once (three nodes on one host) or three times (one per node)")
    nodes = cluster_nodes(host, base_port)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for node in nodes:
            store = (store_dir or directory) / f"{node.name}-jetstream"
            conf = directory / f"{node.name}.conf"
            conf.write_text(render_nats_node(node, nodes, store), encoding="utf-8")
            typer.echo(f"on {node.host}: nats-server -c {conf}")
    except (OSError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"broker_url: {broker_url_list(nodes)}")


@cloud_app.command("export-ledger")
def cloud_export_ledger(
    out: Annotated[Path, typer.Option("--out", help="directory to write the export into")],
    database_url: Annotated[
        str | None, typer.Option(help="sqlite:///file or postgresql://...")
    ] = None,
    deployment: Annotated[str | None, typer.Option(help="deployment id")] = None,
    env_file: Annotated[Path | None, typer.Option(help="GRIDMINT_CLOUD_* settings file")] = None,
) -> None:
    """Export signed records, keys, ledger entries and checkpoints for `gridmint verify`."""
    from cloud.services.ledger import (
        default_ledger_key_path,
        default_origin,
        load_or_create_ledger_key,
    )
    from cloud.services.ledger_export import export_ledger
    from cloud.storage.ledger_store import LedgerStore
    from cloud.storage.store import StorageUrlError, Store
    from protocol import cose

    overrides: dict[str, Any] = {
        k: v
        for k, v in {"database_url": database_url, "deployment": deployment}.items()
        if v is not None
    }
    settings = _cloud_settings(env_file, overrides)
    key_path = default_ledger_key_path(settings.database_url, settings.ledger_key_file)
    if key_path is None or not key_path.exists():
        raise fail(f"no ledger key at {key_path}: set GRIDMINT_CLOUD_LEDGER_KEY_FILE")
    try:
        public = cose.public_bytes(load_or_create_ledger_key(key_path).public_key())
    except OSError as exc:
        raise fail(str(exc)) from None

    async def main() -> Any:
        try:
            store = await Store.connect(settings.database_url)
        except StorageUrlError as exc:
            raise fail(str(exc)) from None
        try:
            return await export_ledger(
                LedgerStore(store.engine),
                out,
                origin=default_origin(settings.deployment, settings.ledger_origin),
                log_public_key=public,
                deployment=settings.deployment,
                market_mode=settings.market_mode if settings.market_enabled else None,
            )
        finally:
            await store.close()

    done = asyncio.run(main())
    typer.echo(
        f"exported {done.records} records, {done.devices} devices, {done.entries} entries, "
        f"{done.checkpoints} checkpoints to {done.directory}; check with: gridmint verify {out}"
    )


@cloud_app.command("add-device")
def cloud_add_device(
    device_id: Annotated[str, typer.Option()],
    site_id: Annotated[str, typer.Option()],
    public_key: Annotated[str, typer.Option(help="raw Ed25519 public key, hex")],
    capacity_w: Annotated[int, typer.Option(min=1)] = 5000,
    zone: Annotated[str, typer.Option()] = "",
    database_url: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Register an approved device directly in the aggregator's database (admin)."""
    from cloud.settings import CloudSettings
    from cloud.storage.store import StorageUrlError, Store
    from protocol import cose
    from protocol.topics import TopicError, check_segment

    try:
        check_segment(device_id, "device id")
        check_segment(site_id, "site id")
        pub = bytes.fromhex(public_key)
        if len(pub) != 32:
            raise ValueError("public key must be 32 bytes (64 hex digits)")
    except (TopicError, ValueError) as exc:
        raise fail(str(exc)) from None
    url = database_url or CloudSettings().database_url

    async def main() -> None:
        store = await Store.connect(url)
        try:
            await store.migrate()
            await store.add_device(device_id, site_id, pub, cose.key_id(pub), capacity_w, zone)
        finally:
            await store.close()

    try:
        asyncio.run(main())
    except (StorageUrlError, ValueError) as exc:
        raise fail(str(exc)) from None
    console.print(f"registered {device_id} at {site_id}")


@sim_app.command("fleet")
def sim_fleet(
    devices: Annotated[int, typer.Option(min=1, max=1_000_000, help="edge identities")] = 1000,
    intervals: Annotated[
        int, typer.Option(min=1, max=2000, help="5-minute intervals each device mints")
    ] = 2,
    broker: Annotated[
        str,
        typer.Option(
            help="mqtt://host:port, or a comma-separated failover list (the fleet's "
            "connections start on different entries)"
        ),
    ] = "mqtt://127.0.0.1:1883",
    database_url: Annotated[
        str | None, typer.Option(help="the aggregator's database, to register the fleet in")
    ] = None,
    deployment: Annotated[str, typer.Option()] = "gridmint-dev",
    sites: Annotated[int | None, typer.Option(min=1, help="sites (default: one each)")] = None,
    connections: Annotated[int, typer.Option(min=1, max=256)] = 4,
    window: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    json_out: Annotated[bool, typer.Option("--json", help="the report as one JSON object")] = False,
) -> None:
    """Many edge identities in one process: register them (approved) in the aggregator's
    database, mint INTERVALS records each at accelerated time, publish them over CONNECTIONS
    shared MQTT connections and reconcile the receipts (exit 1 if any record is not held)."""
    from rich.progress import Progress

    from cloud.settings import CloudSettings
    from cloud.storage.store import StorageUrlError, Store
    from mqttlink import BrokerUrlError, parse_brokers
    from simulators.fleet import make_fleet, run_fleet

    try:
        parse_brokers(broker)  # before anything is registered
    except BrokerUrlError as exc:
        raise fail(str(exc)) from None
    fleet = make_fleet(devices, sites)
    url = database_url or CloudSettings().database_url

    async def register(progress: Progress) -> None:
        store = await Store.connect(url)
        task = progress.add_task("registering devices", total=len(fleet))
        slots = asyncio.Semaphore(8)

        async def one(d: Any) -> None:
            async with slots:
                await store.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w)
            progress.advance(task)

        try:
            await store.migrate()
            await asyncio.gather(*(one(d) for d in fleet))
        finally:
            await store.close()

    async def main() -> Any:
        with Progress(console=err, transient=True) as progress:
            await register(progress)
            task = progress.add_task("records held by the cloud", total=devices * intervals)
            return await run_fleet(
                fleet,
                broker,
                intervals=intervals,
                deployment=deployment.encode(),
                connections=connections,
                window=window,
                progress=lambda r: progress.update(task, completed=r.accepted),
            )

    try:
        report = asyncio.run(main())
    except (StorageUrlError, BrokerUrlError, ConnectionError) as exc:
        raise fail(str(exc)) from None
    out = {
        "devices": report.devices,
        "minted": report.minted,
        "published": report.published,
        "resent": report.resent,
        "duplicates": report.duplicates,
        "held": report.accepted,
        "lost": report.lost,
        "rejected": dict(report.rejected),
        "seconds": round(report.seconds, 3),
        "records_per_s": round(report.rate),
    }
    if json_out:
        typer.echo(json.dumps(out))
    else:
        console.print(
            f"{report.devices} devices, {report.minted} records minted, {report.accepted} held by "
            f"the cloud in {report.seconds:.1f} s ({report.rate:,.0f}/s), {report.resent} resent, "
            f"{report.lost} lost, rejected {dict(report.rejected) or 0}"
        )
    if report.lost:
        raise typer.Exit(1)


@sim_app.command("meter")
def sim_meter(
    port: Annotated[int, typer.Option(help="Modbus TCP port")] = 5020,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    register_map: Annotated[str, typer.Option(help="register map name")] = "eastron/sdm630",
    capacity_w: Annotated[int, typer.Option(min=1)] = 5000,
    latitude: Annotated[float, typer.Option()] = 48.0,
    longitude: Annotated[float, typer.Option()] = 0.0,
    seed: Annotated[int, typer.Option()] = 1,
    speed: SpeedOpt = 1.0,
    start: StartOpt = None,
    origin: OriginOpt = None,
) -> None:
    """Serve a simulated home over Modbus TCP: unit 1 = PV meter, unit 2 = grid meter."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    from edge.drivers.register_map import RegisterMapError, find_register_map, load_register_map
    from simulators.modbus_meter import SimulatedMeter, start_meter_server

    try:
        rmap = load_register_map(find_register_map(register_map))
    except (RegisterMapError, FileNotFoundError, ValueError) as exc:
        raise fail(str(exc)) from None
    clock = _clock(speed, start, origin)
    common: dict[str, Any] = {
        "clock": clock,
        "capacity_w": capacity_w,
        "latitude": latitude,
        "longitude": longitude,
        "base_load_w": 400,
        "seed": seed,
    }

    async def main(stop: asyncio.Event) -> None:
        meters = {
            1: SimulatedMeter(rmap, role="pv", **common),
            2: SimulatedMeter(rmap, role="grid", **common),
        }
        try:
            server = await start_meter_server(meters, host=host, port=port)
        except OSError as exc:
            raise fail(f"cannot listen on {host}:{port}: {exc}") from None
        err.print(
            f"simulated {rmap.model} on {host}:{server.port} (unit 1 PV, unit 2 grid); Ctrl-C stops"
        )
        try:
            await stop.wait()
        finally:
            await server.stop()

    _run_until_signal(main)


@token_app.command("decode")
def token_decode(
    source: Annotated[
        str, typer.Argument(help="file with the record's bytes, '-' for stdin, or hex with --hex")
    ] = "-",
    hex_input: Annotated[
        bool, typer.Option("--hex", help="SOURCE (or stdin) holds hex text")
    ] = False,
    public_key: Annotated[
        str | None, typer.Option(help="check the signature with this public key (hex)")
    ] = None,
    deployment: Annotated[str, typer.Option(help="deployment id for the check")] = "gridmint-dev",
) -> None:
    """Print a signed interval record for humans (and check its signature if given a key)."""
    from protocol import cose
    from protocol.record import RecordFormatError

    try:
        if hex_input:
            if source == "-":
                text = sys.stdin.read()
            elif all(c in string.hexdigits for c in source.strip()):
                text = source
            else:
                text = Path(source).read_text()
            data = bytes.fromhex(text.strip())
        else:
            data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except (OSError, ValueError) as exc:
        raise fail(f"cannot read the record: {exc}") from None
    try:
        env, rec = cose.open_record(data)
    except (cose.EnvelopeError, RecordFormatError) as exc:
        raise fail(f"not a valid gridmint record: {exc}") from None
    e = rec.energy
    out: dict[str, Any] = {
        "token_id": rec.token_id,
        "record_hash": cose.record_hash(data).hex(),
        "kid": env.kid.hex(),
        "alg": env.alg,
        "version": rec.version,
        "device_id": rec.device_id,
        "meter": rec.meter,
        "seq": rec.seq,
        "boot": rec.boot,
        "interval_start": datetime.fromtimestamp(rec.interval_start, UTC).isoformat(),
        "interval_s": rec.interval_s,
        "energy_wh": {
            "generated": e.generated_wh,
            "imported": e.imported_wh,
            "exported": e.exported_wh,
            "charged": e.charged_wh,
            "discharged": e.discharged_wh,
        },
        "registers_wh": list(rec.registers_wh),
        "channels": str(rec.channels),
        "soc_permille": rec.soc_permille,
        "reading_time": datetime.fromtimestamp(rec.reading_ms / 1000, UTC).isoformat(),
        "time_quality": rec.time_quality.name.lower(),
        "time_source": list(rec.time_source),
        "status": rec.status,
        "quality": rec.quality.name.lower(),
        "prev_hash": rec.prev_hash.hex(),
        "firmware": rec.firmware,
        "zone": rec.zone,
        "tech": list(rec.tech),
    }
    if public_key is not None:
        try:
            cose.verify(env, bytes.fromhex(public_key), deployment.encode())
            out["signature"] = "valid"
        except (cose.SignatureError, ValueError) as exc:
            out["signature"] = f"INVALID: {exc}"
    console.print_json(json.dumps(out))
    if out.get("signature", "valid") != "valid":
        raise typer.Exit(1)


@app.command("verify")
def verify(
    directory: Annotated[
        Path | None,
        typer.Argument(help="the export directory to check (or, with --api, to download into)"),
    ] = None,
    api: Annotated[
        str | None, typer.Option(help="download the export from this aggregator URL first")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="GRIDMINT_TOKEN", help="bearer token or API key for --api"),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="print one JSON object instead of tables")
    ] = False,
) -> None:
    """Check a ledger export: signatures, record chains, ledger rules, Merkle log, checkpoints."""
    from gridmint.verify import verify_command  # imported here: the agent never loads it

    verify_command(directory, api, token, json_out)


# Distributions of each extra, as in pyproject.toml's [project.optional-dependencies] (demo is
# edge + cloud + the embedded broker); tests/unit/test_cli_extras.py keeps the two in step.
EXTRAS: dict[str, frozenset[str]] = {
    "edge": frozenset({"paho-mqtt", "pymodbus", "pyserial", "aiosqlite", "gpiozero"}),
    "cloud": frozenset(
        {
            "paho-mqtt",
            "sqlalchemy",
            "asyncpg",
            "aiosqlite",
            "alembic",
            "fastapi",
            "uvicorn",
            "httptools",
            "jinja2",
            "argon2-cffi",
            "python-multipart",
            "influxdb-client",
            "xmlschema",
            "httpx",
        }
    ),
}
EXTRAS["demo"] = EXTRAS["edge"] | EXTRAS["cloud"] | {"amqtt"}

#: Top-level import name -> distribution, where the two differ.
DISTRIBUTION_OF_MODULE = {
    "paho": "paho-mqtt",
    "serial": "pyserial",
    "argon2": "argon2-cffi",
    "multipart": "python-multipart",
    "python_multipart": "python-multipart",
    "influxdb_client": "influxdb-client",
}

#: The extra each command group runs on, when a module is in several extras (paho, aiosqlite).
COMMAND_EXTRA = {"edge": "edge", "provision": "edge", "sim": "edge", "cloud": "cloud"}
EXTRA_WHAT = {
    "edge": "the edge agent's packages",
    "cloud": "the aggregator's packages",
    "demo": "the demo's packages (edge, cloud and the embedded broker)",
}
_GROUPS = ("edge", "cloud", "sim", "token", "provision")


def command_name(argv: list[str]) -> str:
    """`gridmint cloud serve` from the arguments: the command words before the first option."""
    words: list[str] = []
    for arg in argv:
        if arg.startswith("-"):
            break
        words.append(arg)
    words = words[: 2 if words and words[0] in _GROUPS else 1]
    return " ".join(["gridmint", *words])


def missing_extra(module: str | None, argv: list[str]) -> str | None:
    """The extra that installs `module` for the command in `argv`; None: not one of ours."""
    top = (module or "").split(".")[0]
    dist = DISTRIBUTION_OF_MODULE.get(top, top.replace("_", "-"))
    extras = [name for name, dists in EXTRAS.items() if dist in dists]
    if not extras:
        return None
    words = [a for a in argv if not a.startswith("-")]
    if words and words[0] == "demo":
        return "demo"
    wanted = COMMAND_EXTRA.get(words[0]) if words else None
    return wanted if wanted in extras else extras[0]


def main() -> None:
    """Console entry point."""
    try:
        app()
    except ModuleNotFoundError as exc:
        argv = sys.argv[1:]
        extra = missing_extra(exc.name, argv)
        if extra is None:
            raise  # not an optional dependency: a broken install, keep the traceback
        print(
            f"error: '{command_name(argv)}' needs {EXTRA_WHAT[extra]}: "
            f"pip install 'gridmint[{extra}]'",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
