"""`gridmint demo`: simulated homes, real edge agents, a broker and the cloud, on one clock.

Owns: wiring N simulated homes (a PV meter and a grid meter each, served over Modbus TCP) to N
edge agents, an embedded MQTT broker (or an external one) and the aggregator on SQLite, all
running on one simulated clock so that hours pass in minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cloud.runtime import CloudRuntime, free_port
from cloud.services.mailer import OutboxMailer, SentMail
from cloud.settings import CloudSettings
from cloud.storage.accounts import AccountStore
from edge.accounting import Channel
from edge.actuators import make_actuators, prepare_actuators
from edge.agent import EdgeAgent
from edge.keys import create_key_file
from edge.meters import make_reader
from edge.outbox import Outbox
from edge.settings import EdgeSettings, MeterSettings
from gridmint.broker import EmbeddedBroker
from protocol import cose
from protocol.clock import SimClock
from rules.ledger import Entry, LedgerEngine
from simulators.modbus_meter import SimulatedMeter, start_meter_server
from simulators.models import BatteryModel, HomeModel
from simulators.sunspec_device import SimulatedSunSpec, start_sunspec_tcp_server

DEPLOYMENT = "gridmint-demo"
PV_UNIT, GRID_UNIT, INVERTER_UNIT, BATTERY_UNIT = 1, 2, 3, 4
BATTERY_WH, BATTERY_MAX_W = 10_000, 5_000  # the cloud's defaults for an unregistered battery


def default_start() -> datetime:
    """Yesterday at 10:00 UTC: a sunny morning in the past, near longitude 0."""
    today = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0)
    return today - timedelta(days=1)


@dataclass
class DemoOptions:
    """What `gridmint demo` was asked to do."""

    homes: int = 3
    speed: float = 120.0
    duration_s: float | None = None
    start: datetime = field(default_factory=default_start)
    broker_url: str | None = None
    http_port: int = 8000
    data_dir: Path | None = None
    interval_s: int = 300
    as_json: bool = False


@dataclass
class Home:
    """One simulated home: its meters' server and its edge agent."""

    site_id: str
    device_id: str
    agent: EdgeAgent
    outbox: Outbox
    server: Any
    sunspec: Any = None
    model: HomeModel | None = None
    task: asyncio.Task[None] | None = None


async def _make_home(
    i: int, opts: DemoOptions, clock: SimClock, broker_url: str, data: Path, cloud: CloudRuntime
) -> Home:
    from edge.drivers.register_map import find_register_map, load_register_map

    site_id, device_id = _site_ids(i)[-1], f"pi-{i:03d}"
    capacity_w = 4000 + 500 * (i % 4)
    sdm630 = load_register_map(find_register_map("eastron/sdm630"))
    # One home model behind every simulated device of the home: the meters see what the
    # inverter's generation limit and the battery's setpoint do to the flows.
    # Home 2 charges an electric car through the day (a 3 kW base load): it uses most of its
    # own generation, so its granular certificates make whole kg for the carbon shop within a
    # short demo, and it buys on the market.
    base_load_w = 3_000 if i == 2 else 350 + 50 * (i % 3)
    home = HomeModel(capacity_w, 48.0 + i * 0.1, 0.0 + i * 0.2, base_load_w, 1000 + i)
    home.battery = BatteryModel(
        BATTERY_WH,
        BATTERY_MAX_W,
        BATTERY_MAX_W,
        soc=0.6,
        efficiency=0.9,
        min_soc=0.05,
        start_ts=clock.now(),
    )
    meters = {
        PV_UNIT: SimulatedMeter(sdm630, role="pv", clock=clock, seed=1000 + i, home=home),
        GRID_UNIT: SimulatedMeter(sdm630, role="grid", clock=clock, seed=1000 + i, home=home),
    }
    server = await start_meter_server(meters, host="127.0.0.1", port=0)
    # A PV inverter with SunSpec immediate controls (model 123) and a battery inverter with
    # storage controls (model 124): what dispatch events act on.
    sunspec = await start_sunspec_tcp_server(
        {
            INVERTER_UNIT: SimulatedSunSpec(
                clock, home=home, controls=True, serial_number=f"SIM-INV-{i:03d}", seed=1000 + i
            ),
            BATTERY_UNIT: SimulatedSunSpec(
                clock,
                home=home,
                inverter_role="battery",
                serial_number=f"SIM-BAT-{i:03d}",
                model_name="SimBattery 5000",
                seed=2000 + i,
            ),
        },
        host="127.0.0.1",
        port=0,
    )
    settings = EdgeSettings(
        device_id=device_id,
        site_id=site_id,
        deployment=DEPLOYMENT,
        key_file=data / device_id / "device.key",
        state_db=data / device_id / "edge.sqlite",
        broker_url=broker_url,
        interval_s=300 if opts.interval_s == 300 else 900,
        capacity_w=capacity_w,
        zone="demo-zone-1",
        resend_after_s=5.0,
        telemetry_interval_s=1.0,
        # Each Pi checks that the cloud's signed ledger holds its tokens, as in production.
        cloud_url=cloud.url,
        ledger_key=cloud.ledger.verifier_key if cloud.ledger is not None else "",
        proof_check_interval_s=2.0,
        meters=[
            MeterSettings(
                name="pv",
                register_map="eastron/sdm630",
                port=server.port,
                unit_id=PV_UNIT,
                channels={Channel.GENERATED: "export_energy"},
                flows={"pv": "-total_power"},
                serial=f"SIM-PV-{i:03d}",
            ),
            MeterSettings(
                name="grid",
                register_map="eastron/sdm630",
                port=server.port,
                unit_id=GRID_UNIT,
                channels={Channel.IMPORTED: "import_energy", Channel.EXPORTED: "export_energy"},
                flows={"grid": "total_power"},
                serial=f"SIM-GRID-{i:03d}",
            ),
            MeterSettings(
                name="inverter",
                driver="sunspec",
                port=sunspec.port,
                unit_id=INVERTER_UNIT,
                controls=["opModMaxLimW"],
                serial=f"SIM-INV-{i:03d}",
            ),
            MeterSettings(
                name="battery",
                driver="sunspec",
                port=sunspec.port,
                unit_id=BATTERY_UNIT,
                controls=["opModFixedW"],
                flows={"battery": "ac_power_w"},
                soc="state_of_charge_pct",
                serial=f"SIM-BAT-{i:03d}",
            ),
        ],
        dispatch_key=cloud.dispatch.public_key.hex() if cloud.dispatch is not None else "",
    )
    key = create_key_file(settings.key_file)
    public = cose.public_bytes(key.public_key())
    assert cloud.store is not None
    await cloud.store.add_device(
        device_id, site_id, public, cose.key_id(public), capacity_w, settings.zone
    )
    outbox = await Outbox.open(settings.state_db)
    readers = [make_reader(m) for m in settings.meters]
    actuators = await prepare_actuators(make_actuators(settings, readers))
    agent = EdgeAgent(settings, key, clock, readers, outbox, actuators=actuators)
    if cloud.fleet is not None:
        await cloud.fleet.store.set_site_location(site_id, home.latitude_deg, home.longitude_deg)
    return Home(site_id, device_id, agent, outbox, server, sunspec, home)


async def run_demo(opts: DemoOptions, console: Console, stop: asyncio.Event) -> dict[str, Any]:
    """Run the demo until `stop` is set or the duration passes; return the summary."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    tmp = None
    if opts.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gridmint-demo-")
        data = Path(tmp.name)
    else:
        data = opts.data_dir
        data.mkdir(parents=True, exist_ok=True)
    out = console if not opts.as_json else Console(stderr=True)
    clock = SimClock.starting_at(opts.start.timestamp(), opts.speed)
    broker: EmbeddedBroker | None = None
    if opts.broker_url is None:
        broker = EmbeddedBroker("127.0.0.1", free_port())
        await broker.start()
        broker_url = broker.url
        out.print(f"[bold]broker[/]  embedded, plain TCP on loopback: {broker_url}")
    else:
        broker_url = opts.broker_url
        out.print(f"[bold]broker[/]  external: {broker_url}")
    cloud = CloudRuntime(
        CloudSettings(
            database_url=f"sqlite:///{data / 'cloud.sqlite'}",
            broker_url=broker_url,
            deployment=DEPLOYMENT,
            http_port=opts.http_port,
            client_id=f"gridmint-aggregator-{int(time.time())}",
            market_interval_s=300 if opts.interval_s == 300 else 900,
            # The DERMS's clock-second settings scale with the simulated clock's speed: a Pi
            # sends telemetry every real second, which is `speed` simulated seconds.
            fleet_stale_s=max(60.0, 10 * opts.speed),
            dispatch_resend_s=max(30.0, 10 * opts.speed),
            bank_transfer_fee_minor=DEMO_TRANSFER_FEE_MINOR,
        ),
        clock=clock,
    )
    homes: list[Home] = []
    try:
        try:
            await cloud.start()
        except (OSError, RuntimeError):
            # The chosen port is taken: serve on any free one rather than fail the demo.
            await cloud.stop()
            cloud.settings.http_port = 0
            cloud.http_port = 0
            await cloud.start()
        login_url, logins = await _demo_accounts(cloud, out, opts.homes)
        await _demo_policies(cloud, out, logins)
        out.print(f"[bold]data[/]    {data}")
        homes.extend(
            [
                await _make_home(i, opts, clock, broker_url, data, cloud)
                for i in range(1, opts.homes + 1)
            ]
        )
        if cloud.fleet is not None:
            await cloud.fleet.load()  # the homes' devices were registered just now
        agent_stop = asyncio.Event()
        for h in homes:
            h.task = asyncio.create_task(h.agent.run(agent_stop))
        events = asyncio.create_task(_demo_dispatch(cloud, clock, out, homes))
        out.print(
            f"[bold]homes[/]   {opts.homes} simulated, clock x{opts.speed:g} from "
            f"{opts.start.isoformat()} ({opts.interval_s} s intervals)"
        )
        await _watch(opts, out, stop, homes, cloud)
        events.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await events
        # Drain: stop minting, let every stored token reach the cloud.
        for h in homes:
            await h.agent.stop_sampling()
        for h in homes:
            await h.agent.drain(timeout_s=30.0)
        summary = await _summary(homes, cloud, clock, data)
        summary["dashboard"] = login_url
        summary["logins"] = [
            {"role": x.role, "email": x.email, "page": x.page, "site_id": x.site_id} for x in logins
        ]
        # Credits and the shop first: their deposits, withdrawals, listings, paid orders and
        # retirements are ledger leaves, which the export below carries and verify replays.
        summary["credits"] = await _credits_summary(cloud, opts.homes)
        summary["shop"] = await _shop_summary(cloud, opts.homes)
        summary["ledger"] = await _ledger_summary(cloud, data, keep=opts.data_dir is not None)
        summary["proofs"] = await _proof_summary(homes, cloud)
        summary["market"] = await _market_summary(cloud, summary["ledger"])
        summary["dispatch"] = await _dispatch_summary(cloud, homes)
        summary["meter"] = await _meter_summary(cloud, opts.homes)
        agent_stop.set()
        for h in homes:
            if h.task is not None:
                await h.task
        return summary
    finally:
        for h in homes:
            with contextlib.suppress(Exception):
                await h.outbox.close()
            with contextlib.suppress(Exception):
                await h.server.stop()
            if h.sunspec is not None:
                with contextlib.suppress(Exception):
                    await h.sunspec.stop()
        await cloud.stop()
        if broker is not None:
            with contextlib.suppress(Exception):
                await broker.stop()
        if tmp is not None:
            tmp.cleanup()


@dataclass(frozen=True)
class DemoLogin:
    """One demo account a newcomer can log in as, and the page it opens on."""

    role: str
    email: str
    page: str
    site_id: str | None = None


def _site_ids(homes: int) -> list[str]:
    return [f"site-{i:03d}" for i in range(1, homes + 1)]


async def _demo_accounts(
    cloud: CloudRuntime, out: Console, homes: int
) -> tuple[str, list[DemoLogin]]:
    """An account for every role (a homeowner per home, owning its site), one shared password,
    and a printed list of who to log in as to see each page. Returns the operator's login link
    (it logs the browser straight in) and the logins."""
    assert cloud.store is not None
    accounts = AccountStore(cloud.store.engine)
    password = secrets.token_urlsafe(12)
    staff = [
        DemoLogin("grid_operator", "operator@demo.gridmint", "/"),
        DemoLogin("approver", "approver@demo.gridmint", "/approvals"),
        DemoLogin("installer", "installer@demo.gridmint", "/"),
        DemoLogin("provider", "provider@demo.gridmint", "/shop"),
    ]
    owners = [
        DemoLogin("homeowner", f"home-{i:03d}@demo.gridmint", "/home /market /shop", site_id)
        for i, site_id in enumerate(_site_ids(homes), start=1)
    ]
    operator_id = ""
    for login in staff + owners:
        name = f"Demo {login.role.replace('_', ' ')}"
        if login.site_id is not None:
            name = f"Homeowner of {login.site_id}"
        account = await accounts.create_account(login.email, name, password, login.role, "approved")
        if login.site_id is not None:
            await accounts.create_site(
                login.site_id, account.account_id, f"Demo home {login.site_id}", "demo-zone-1"
            )
        if login.role == "grid_operator":
            operator_id = account.account_id
    token = await accounts.issue_token(operator_id, ttl_s=7 * 24 * 3600)
    login_url = f"{cloud.url}/login?token={token}"
    out.print(f"[bold]cloud[/]   dashboard: [link]{login_url}[/link]")
    out.print(f"        API docs:  {cloud.url}/docs")
    out.print(f"        log in at {cloud.url}/login, password {password} for every login:")
    for login in staff + owners[:3]:
        where = login.page + (f" ({login.site_id})" if login.site_id else "")
        out.print(f"          {login.role:<14} {login.email:<26} {where}")
    if len(owners) > 3:
        more = "home-004" if len(owners) == 4 else f"home-004 to home-{len(owners):03d}"
        out.print(f"          homeowner      {more}@demo.gridmint")
    if isinstance(cloud.mailer, OutboxMailer):  # no SMTP server: show the mails here
        out.print(f"        new shop accounts register at {cloud.url}/register")

        def show(mail: SentMail) -> None:
            link = next((w for w in mail.text.split() if "/verify-email?token=" in w), "")
            out.print(f"[bold]mail[/]    (not sent: no SMTP server) to {mail.to}: {link}")

        cloud.mailer.on_send = show
    return login_url, staff + owners


BUYER_CREDITS_MINOR = 20_000  # each buying home starts with 200.00 in payment credits
DEMO_TRANSFER_FEE_MINOR = 30  # the flat bank-transfer fee of credit top-ups and redemptions


async def _credits_summary(cloud: CloudRuntime, homes: int) -> dict[str, Any]:
    """A homeowner buys market credits through the payment port (the embedded sandbox: the
    same port and webhooks path Stripe uses) and cashes some of them back, over the running
    aggregator's HTTP API; the flat bank-transfer fee comes off both ways."""
    import httpx

    if homes < 2 or cloud.store is None or cloud.ledger is None:
        return {}
    accounts = AccountStore(cloud.store.engine)
    owner = await accounts.get_account_by_email("home-002@demo.gridmint")
    if owner is None:
        return {}
    token = await accounts.issue_token(owner.account_id, ttl_s=3600)
    site = "site-002"
    h = {"Authorization": f"Bearer {token}"}
    currency = cloud.settings.market_currency
    async with httpx.AsyncClient(base_url=cloud.url, headers=h, timeout=30) as c:
        before = (await c.get(f"/api/v1/sites/{site}/credits")).json()["balance_minor"]
        r = await c.post(
            f"/api/v1/sites/{site}/credits/top-ups",
            json={"amount_minor": 5_000, "currency": currency},
        )
        r.raise_for_status()
        top_up = r.json()
        r = await c.post(
            f"/api/v1/payments/sandbox/{top_up['payment_id']}/complete", json={"succeed": True}
        )
        r.raise_for_status()
        r = await c.post(
            f"/api/v1/sites/{site}/credits/redemptions",
            json={"amount_minor": 2_000, "currency": currency, "payout_to": "DE00 demo bank"},
        )
        r.raise_for_status()
        redemption = r.json()
        after = (await c.get(f"/api/v1/sites/{site}/credits")).json()
    return {
        "site": site,
        "currency": currency,
        "fee_minor": DEMO_TRANSFER_FEE_MINOR,
        "balance_before_minor": before,
        "topped_up_minor": top_up["transfer"]["gross_minor"],
        "deposited_minor": top_up["transfer"]["net_minor"],
        "redeemed_minor": redemption["gross_minor"],
        "paid_out_minor": redemption["net_minor"],
        "redemption_state": redemption["state"],
        "balance_after_minor": after["balance_minor"],
    }


async def _demo_policies(cloud: CloudRuntime, out: Console, logins: list[DemoLogin]) -> None:
    """The simulated homeowners trade through automated policies: odd homes sell their surplus
    at no less than 12 per kWh, even homes buy up to 250 Wh an interval below 26 (with credits
    deposited for them). The market is live as soon as the first intervals are in the ledger
    (an offer needs a forecast, learnt from signed delivery)."""
    from cloud.domain.policies import TradingPolicy

    if cloud.market is None or cloud.ledger is None:
        return
    homeowners = [x for x in logins if x.site_id is not None]
    assert cloud.store is not None
    accounts = AccountStore(cloud.store.engine)
    now = int(cloud.clock.now())
    for k, login in enumerate(homeowners):
        assert login.site_id is not None
        account = await accounts.get_account_by_email(login.email)
        assert account is not None
        if k % 2 == 0:
            policy = TradingPolicy(
                login.site_id, account.account_id, sell_min_price=12, sell_max_wh=400
            )
        else:
            policy = TradingPolicy(
                login.site_id, account.account_id, buy_max_price=26, buy_max_wh=250
            )
            await cloud.ledger.append(_deposit(login.site_id, now, BUYER_CREDITS_MINOR))
        await cloud.market.store.set_policy(policy, now * 1000)
    sellers = (len(homeowners) + 1) // 2
    out.print(
        f"[bold]market[/]  {cloud.url}/market: {sellers} homes sell surplus (policy, >= 12/kWh), "
        f"{len(homeowners) - sellers} buy (<= 26/kWh)"
    )


def _deposit(site_id: str, at: int, amount: int) -> Callable[[LedgerEngine], list[Entry]]:
    return lambda engine: [engine.deposit(site_id, at, amount)]


async def _market_summary(cloud: CloudRuntime, ledger: dict[str, Any]) -> dict[str, Any]:
    """Orders, trades, traded and settled Wh, fees, the surplus sold to the grid; and whether
    verify replayed the market."""
    if cloud.market is None:
        return {}
    await cloud.market.close_due_gates()
    surplus = 0
    if cloud.settlement is not None:
        await cloud.settlement.settle_due()
        await cloud.settlement.sell_surplus()
        surplus = cloud.settlement.surplus_sold_wh
    totals = await cloud.market.store.totals()
    return totals | {
        "surplus_sold_wh": surplus,
        "replayed": bool(ledger.get("market_replayed", False)),
    }


# The demo's grid events, in simulated minutes after the start: the operator asks the zone's
# batteries for 2 kW each, then caps every inverter at 40 % of its rating.
BATTERY_EVENT_AT_MIN, BATTERY_EVENT_MIN, BATTERY_W_PER_HOME = 10, 15, 2000
CURTAIL_AT_MIN, CURTAIL_MIN, CURTAIL_PERMYRIAD = 30, 15, 4000


async def _demo_dispatch(
    cloud: CloudRuntime, clock: SimClock, out: Console, homes: list[Home]
) -> None:
    """Create the demo's two dispatch events when the simulated clock reaches them (the same
    call the event board's form and the API make)."""
    from cloud.domain.dispatch_events import EventRequest, EventRequestError
    from protocol.dispatch import ControlMode

    if cloud.dispatch is None or not homes:
        return
    t0 = clock.now()
    plan = [
        (
            BATTERY_EVENT_AT_MIN,
            EventRequest(
                group="zone:demo-zone-1",
                control=ControlMode.OP_MOD_FIXED_W,
                value=BATTERY_W_PER_HOME * len(homes),
                start=0,
                duration_s=BATTERY_EVENT_MIN * 60,
                name="demo: evening peak, discharge the batteries",
            ),
        ),
        (
            CURTAIL_AT_MIN,
            EventRequest(
                group="all",
                control=ControlMode.OP_MOD_MAX_LIM_W,
                value=CURTAIL_PERMYRIAD,
                start=0,
                duration_s=CURTAIL_MIN * 60,
                name="demo: midday surplus, cap PV at 40 %",
            ),
        ),
    ]
    for at_min, req in plan:
        await clock.sleep_until(t0 + at_min * 60)
        start = int(clock.now())
        try:
            view = await cloud.dispatch.create_event(replace(req, start=start), by="demo-operator")
        except EventRequestError as exc:
            out.print(f"[yellow]dispatch[/] {req.name}: not sent: {exc}")
            continue
        out.print(
            f"[bold]dispatch[/] {view.request.name} ({view.event_id}): {view.devices} device(s); "
            f"board {cloud.url}/events/{view.event_id}"
        )


async def _dispatch_summary(cloud: CloudRuntime, homes: list[Home]) -> list[dict[str, Any]]:
    """Each demo event: devices, their responses, the peak of requested and measured power on
    the board, and the reward credits the homes earned."""
    if cloud.dispatch is None:
        return []
    out = []
    for view in reversed(await cloud.dispatch.list_events(10)):
        perf = await cloud.dispatch.performance(view.event_id)
        rows = await cloud.dispatch.device_responses(view.event_id)
        start, end = view.request.start, view.request.start + view.request.duration_s
        during = [(r, m) for t, r, m in (perf.series if perf else []) if start <= t < end]
        before = [m for t, _r, m in (perf.series if perf else []) if t < start]
        out.append(
            {
                "event_id": view.event_id,
                "name": view.request.name,
                "control": view.request.control.wire_name,
                "devices": view.devices,
                "responses": view.responses,
                "baseline_w": perf.baseline_w if perf else None,
                "requested_w": max((r for r, _m in during), default=None, key=abs),
                "delivered_w": during[len(during) // 2][1] if during else None,
                "samples": len(during),
                "measured_before_w": before[-1] if before else None,
                "delivered_wh": sum(r.delivered_wh or 0 for r in rows),
                "reward_minor": sum(r.reward_minor or 0 for r in rows),
            }
        )
    return out


async def _watch(
    opts: DemoOptions, out: Console, stop: asyncio.Event, homes: list[Home], cloud: CloudRuntime
) -> None:
    assert cloud.store is not None
    started = time.monotonic()
    total = opts.duration_s
    with Progress(
        TextColumn("[bold]running[/]"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=out,
        transient=opts.as_json,
    ) as progress:
        task = progress.add_task("demo", total=total or 1, status="starting")
        while not stop.is_set():
            elapsed = time.monotonic() - started
            if total is not None and elapsed >= total:
                break
            stats = await cloud.store.stats(intervals=1)
            minted = 0
            for h in homes:
                minted += (await h.outbox.counters())["minted"]
            sim_now = datetime.fromtimestamp(homes[0].agent.clock.now(), UTC) if homes else None
            progress.update(
                task,
                completed=elapsed if total else 0,
                status=f"sim {sim_now:%H:%M} UTC  minted {minted}  accepted {stats.accepted}  "
                f"rejected {stats.rejected}  {stats.generated_wh / 1000:.2f} kWh",
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def _summary(
    homes: list[Home], cloud: CloudRuntime, clock: SimClock, data: Path
) -> dict[str, Any]:
    assert cloud.store is not None
    counts = {"minted": 0, "delivered": 0, "confirmed": 0, "waiting": 0}
    for h in homes:
        c = await h.outbox.counters()
        for k in counts:
            counts[k] += c[k]
    stats = await cloud.store.stats()
    return {
        "homes": len(homes),
        "minted": counts["minted"],
        "delivered": counts["delivered"],
        "confirmed": counts["confirmed"],
        "waiting": counts["waiting"],
        "accepted": stats.accepted,
        "rejected": stats.rejected,
        "rejected_by_reason": stats.rejected_by_reason,
        "generated_wh": stats.generated_wh,
        "kwh": round(stats.generated_wh / 1000, 3),
        "sim_end": datetime.fromtimestamp(clock.now(), UTC).isoformat(),
        "dashboard": f"{cloud.url}/",
    }


async def _ledger_summary(cloud: CloudRuntime, data: Path, keep: bool) -> dict[str, Any]:
    """Close what is due, export the ledger and check it with the independent verifier."""
    from cloud.services.ledger_export import export_ledger
    from gridmint.verify import verify_export

    ledger = cloud.ledger
    assert ledger is not None
    assert cloud.store is not None
    # Each demo home has one device, so every accepted token is one site interval. The last
    # ones close a grace period after their end: wait for that (on the running clock, bounded).
    accepted = (await cloud.store.stats()).accepted
    deadline = time.monotonic() + 15.0
    while True:
        await ledger.close_due()
        if len(ledger.engine.state.closed) >= accepted or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    await ledger.checkpoint_if_grown()
    export = data / "ledger-export"
    done = await export_ledger(
        ledger.store,
        export,
        origin=ledger.origin,
        log_public_key=ledger.public_key,
        deployment=cloud.settings.deployment,
        market_mode=None if cloud.market is None else cloud.market.config.mode.value,
    )
    report = await asyncio.to_thread(verify_export, export)
    return {
        "entries": done.entries,
        "checkpoints": done.checkpoints,
        "intervals_closed": len(ledger.engine.state.closed),
        "verified": report.ok,
        "market_replayed": report.market_replayed,
        "shop": report.shop.as_dict(),
        "error": None if report.error is None else str(report.error),
        "export": str(export) if keep else None,
    }


async def _proof_summary(homes: list[Home], cloud: CloudRuntime) -> dict[str, int]:
    """A last round of inclusion-proof checks on every Pi, after the final ledger close."""
    from protocol.checkpoint import parse_verifier_key

    assert cloud.ledger is not None
    key = parse_verifier_key(cloud.ledger.verifier_key)
    totals = {"verified": 0, "failed": 0, "waiting": 0}
    for h in homes:
        with contextlib.suppress(Exception):  # a Pi that cannot ask now just keeps waiting
            await h.agent.check_proofs(key)
        counts = await h.outbox.proof_counts()
        totals["verified"] += counts["proven"]
        totals["failed"] += counts["failed"]
        totals["waiting"] += counts["waiting"]
    return totals


# The demo's offset projects: (name, kind, country, standard, verifier, serial prefix, vintage,
# kg on sale, price per tonne in cents). Invented names; the kinds and standards are real ones.
DEMO_PROJECTS = (
    (
        "Rio Verde reforestation",
        "forestry",
        "BR",
        "Verra VCS",
        "SCS Global",
        "VCS-DEMO-1",
        2022,
        5_000,
        1_800,
    ),
    (
        "Kisumu clean cookstoves",
        "cookstoves",
        "KE",
        "Gold Standard",
        "Earthood",
        "GS-DEMO-2",
        2023,
        3_000,
        1_200,
    ),
    (
        "Hellisheidi direct air capture",
        "direct_air_capture",
        "IS",
        "Puro.earth",
        "DNV",
        "PURO-DEMO-3",
        2024,
        500,
        60_000,
    ),
)


async def _shop_summary(cloud: CloudRuntime, homes: int = 1) -> dict[str, Any]:
    """The carbon shop: the demo provider's projects on sale, and one purchase by the first
    homeowner paid through the embedded sandbox provider (the same port and callbacks a
    Stripe payment goes through), its units retired on their behalf. Then a demo home lists
    its solar certificates, another home buys a kg of them, and the kg is traced to the
    devices' signed records and the signed ledger (`_solar_summary`)."""
    from cloud.domain.payments import Money
    from cloud.services.carbon_shop import ShopService
    from cloud.services.payments import PaymentService, SandboxProvider
    from cloud.storage.carbon_store import CarbonStore
    from cloud.storage.certificates_store import CertificateStore
    from cloud.storage.payments_store import PaymentStore

    assert cloud.store is not None
    accounts = AccountStore(cloud.store.engine)
    provider = await accounts.get_account_by_email("provider@demo.gridmint")
    buyer = await accounts.get_account_by_email("home-001@demo.gridmint")
    if provider is None or buyer is None:
        return {}
    sandbox = SandboxProvider()
    payments = PaymentService(sandbox, PaymentStore(cloud.store.engine), None, now=cloud.clock.now)  # type: ignore[arg-type]

    async def start_payment(ref: str, amount_minor: int, currency: str, what: str) -> str:
        return (await payments.start(ref, Money(amount_minor, currency), what)).payment_id

    shop = ShopService(
        CarbonStore(cloud.store.engine),
        start_payment,
        now=cloud.clock.now,
        ledger=cloud.ledger,
        certificates=CertificateStore(cloud.store.engine),
        grid_g_co2e_per_kwh=cloud.settings.shop_grid_g_co2e_per_kwh,
        deployment=cloud.settings.deployment,
    )
    payments.outcomes = shop  # type: ignore[assignment]

    async def pay(order_id: str) -> None:
        order = await shop.order(order_id)
        assert order.payment_id is not None
        row = await payments.get(order.payment_id)
        assert row is not None
        assert row.provider_id is not None
        await payments.on_event(sandbox.complete(row.provider_id, True))

    lots = []
    for name, kind, country, std, verifier, prefix, vintage, kg, price in DEMO_PROJECTS:
        project = await shop.register_project(
            provider.account_id,
            name=name,
            kind=kind,
            country=country,
            standard=std,
            verifier=verifier,
            serial_prefix=prefix,
            vintage=vintage,
        )
        lots.append(
            await shop.add_lot(
                provider.account_id,
                project.project_id,
                serials=f"{prefix}-1..{kg}",
                price_minor_per_t=price,
                currency="USD",
            )
        )
    order = await shop.checkout(
        buyer.account_id, [(lots[0].lot_id, 250)], "USD", "Homeowner of site-001", "demo"
    )
    await pay(order.order_id)
    statement = await shop.retirement_statement(order.order_id)
    return {
        "projects": len(DEMO_PROJECTS),
        "on_sale_kg": sum(p[7] for p in DEMO_PROJECTS) - 250,
        "order": order.order_id,
        "state": (await shop.order(order.order_id)).state,
        "paid_minor": order.total_minor,
        "currency": "USD",
        "retired": [r["serials"] for r in statement["retirements"]],
        "beneficiary": statement["beneficiary"],
        "pages": f"{cloud.url}/shop",
        "register": f"{cloud.url}/register",
        "solar": await _solar_summary(cloud, shop, pay, accounts, homes),
    }


SOLAR_PRICE_MINOR_PER_T = 3_000  # USD cents per tonne CO2e: 3 cents a kg


async def _solar_summary(
    cloud: CloudRuntime,
    shop: Any,
    pay: Callable[[str], Any],
    accounts: AccountStore,
    homes: int,
) -> dict[str, Any]:
    """The demo home with the most self-consumed generation is issued granular certificates
    and lists them together (one 5-minute certificate is well under a kg); the next home buys
    a kg, and the custody report traces it: every token's signed record verifies with its
    device's key, and the MINT_GEN that minted it is proven in the signed checkpoint."""
    from cloud.services.certificates import CertificateService
    from cloud.storage.certificates_store import CertificateStore
    from protocol.checkpoint import parse_signed_checkpoint, parse_verifier_key
    from protocol.merkle import leaf_hash, verify_inclusion

    ledger = cloud.ledger
    assert ledger is not None
    assert cloud.store is not None
    await ledger.close_due()
    certs = CertificateService(CertificateStore(cloud.store.engine), ledger)
    best: tuple[int, str, list[str]] = (0, "", [])
    for site in _site_ids(homes):
        await certs.issue_granular(site)
        mine = [
            c for c in await certs.owned_by(site) if c.status == "active" and not c.listed_lot_id
        ]
        wh = sum(c.energy_wh for c in mine)
        if wh > best[0]:
            best = (wh, site, [c.certificate_id for c in mine])
    wh, site, ids = best
    owner = await accounts.get_site(site) if site else None
    if owner is None or wh * shop.grid_g_co2e_per_kwh // 1_000_000 < 1:
        return {"listed": False, "certified_wh": wh}
    project, lot = await shop.list_certificates(
        owner.owner_account_id,
        ids,
        price_minor_per_t=SOLAR_PRICE_MINOR_PER_T,
        currency="USD",
        site_name=owner.name,
    )
    others = [s for s in _site_ids(homes) if s != site]
    buyer_email = f"home-{int(others[0][-3:]):03d}@demo.gridmint" if others else None
    buyer = await accounts.get_account_by_email(buyer_email or "home-001@demo.gridmint")
    assert buyer is not None
    order = await shop.checkout(
        buyer.account_id, [(lot.lot_id, 1)], "USD", f"Household of {others[0] if others else site}"
    )
    await pay(order.order_id)
    custody = await shop.custody(project.project_id)
    row = next(x for x in custody["lots"] if x["lot_id"] == lot.lot_id)
    vkey = parse_verifier_key(ledger.verifier_key)
    verified = 0
    for token in row["tokens"]:
        rec, mint = token["record"], token["mint"]
        if rec is None or mint is None or rec["public_key"] is None:
            continue
        s1 = cose.parse(bytes.fromhex(rec["envelope"]))
        cose.verify(s1, bytes.fromhex(rec["public_key"]), custody["records_aad"].encode())
        cp = parse_signed_checkpoint(
            mint["proof"]["checkpoint"].encode(), vkey.name, vkey.public_key
        )
        verify_inclusion(
            leaf_hash(bytes.fromhex(mint["leaf"])),
            mint["seq"],
            cp.size,
            [bytes.fromhex(h) for h in mint["proof"]["path"]],
            cp.root,
        )
        verified += 1
    statement = await shop.retirement_statement(order.order_id)
    return {
        "listed": True,
        "site": site,
        "certificates": len(ids),
        "certified_wh": wh,
        "lot_kg": lot.kg,
        "serials": statement["retirements"][0]["serials"],
        "bought_kg": 1,
        "buyer": statement["beneficiary"],
        "tokens": len(row["tokens"]),
        "records_verified": verified,
        "ledger_leaves": len(row["ledger"]),
        "retirement_leaf": (statement["ledger_proof"] or {}).get("retirement", {}).get("seq"),
    }


async def _meter_summary(cloud: CloudRuntime, homes: int) -> dict[str, Any]:
    """The virtual meter of every demo site: its Green Button export for the whole run,
    checked against the ESPI schema and against the ledger's accepted records, and read back
    in as revenue meter data (a round trip that must reconcile to zero)."""
    import io

    from cloud.domain import greenbutton as gb
    from cloud.services.reconciliation import ReconciliationService
    from cloud.services.virtual_meter import MeterService
    from cloud.storage.meter_store import MeterStore
    from cloud.storage.revenue_store import RevenueStore

    assert cloud.store is not None
    meter = MeterService(MeterStore(cloud.store.engine), cloud.ledger)
    recon = ReconciliationService(meter, RevenueStore(cloud.store.engine))
    out: dict[str, Any] = {
        "sites": 0,
        "intervals": 0,
        "generated_wh": 0,
        "imported_wh": 0,
        "exported_wh": 0,
        "feeds_valid": True,
        "feeds_equal_ledger": True,
        "round_trip_difference_wh": 0,
        "schema_errors": [],
        "api": f"{cloud.url}/api/v1/sites/{{site_id}}/meter",
    }
    for site_id in _site_ids(homes):
        span = await meter.span(site_id)
        if span is None:
            continue
        first, last_end, _native = span
        regs = await meter.registers(site_id, last_end)
        feed = b"".join([p async for p in meter.green_button(site_id, first, last_end)])
        errors = gb.validate(feed)
        loaded = gb.load_feed(io.BytesIO(feed))
        got = {
            key: sum(v.value_wh for v in loaded.reading(key).values)
            for key in ("import", "export", "generation")
        }
        want = {
            "import": regs.imported_wh,
            "export": regs.exported_wh,
            "generation": regs.generated_wh,
        }
        await recon.import_feed(site_id, feed, source="demo round trip", by="demo")
        report = await recon.report(site_id, first, last_end, "import")
        out["sites"] += 1
        out["intervals"] += regs.intervals
        out["generated_wh"] += regs.generated_wh
        out["imported_wh"] += regs.imported_wh
        out["exported_wh"] += regs.exported_wh
        out["feeds_valid"] = out["feeds_valid"] and not errors
        out["schema_errors"] += errors[:3]
        out["feeds_equal_ledger"] = out["feeds_equal_ledger"] and got == want
        out["round_trip_difference_wh"] += abs(report.total.difference_wh)
    return out


def print_summary(summary: dict[str, Any], console: Console, as_json: bool) -> None:
    """Human table, or one JSON object as the last line on stdout."""
    if as_json:
        print(json.dumps(summary, sort_keys=True), flush=True)
        return
    console.print("\n[bold]summary[/]")
    for k in ("homes", "minted", "delivered", "accepted", "rejected", "kwh", "waiting"):
        console.print(f"  {k:<10} {summary[k]}")
    if summary["rejected_by_reason"]:
        console.print(f"  reasons    {summary['rejected_by_reason']}")
    led = summary.get("ledger")
    if led:
        verdict = "[green]verified[/]" if led["verified"] else f"[red]FAILED[/] {led['error']}"
        console.print(
            f"  ledger     {led['entries']} entries, {led['intervals_closed']} intervals closed, "
            f"{led['checkpoints']} signed checkpoints: {verdict}"
        )
        if led["export"]:
            console.print(f"             re-check it yourself: gridmint verify {led['export']}")
    market = summary.get("market")
    if market:
        console.print(
            f"  market     {market['orders']} orders, {market['trades']} trades, "
            f"{market['traded_wh']} Wh traded, {market['settled_wh']} Wh settled in "
            f"{market['settled_trades']} trades ({market['short_trades']} under-delivered), "
            f"fees {market['platform_fees_minor']} platform + {market['dso_fees_minor']} "
            f"distribution, {market['surplus_sold_wh']} Wh surplus sold to the grid at the "
            f"feed-in price; replayed by verify: {'yes' if market['replayed'] else 'no'}"
        )
    proofs = summary.get("proofs")
    if proofs:
        console.print(
            f"  proofs     {proofs['verified']} tokens proven in the signed log on the Pis, "
            f"{proofs['failed']} failed, {proofs['waiting']} not yet in the log"
        )
    cr = summary.get("credits")
    if cr:
        console.print(
            f"  credits    {cr['site']} topped up {cr['topped_up_minor'] / 100:.2f} "
            f"{cr['currency']} through the sandbox payment provider "
            f"({cr['deposited_minor'] / 100:.2f} credited after the "
            f"{cr['fee_minor'] / 100:.2f} transfer fee) and redeemed "
            f"{cr['redeemed_minor'] / 100:.2f} ({cr['paid_out_minor'] / 100:.2f} paid out, "
            f"{cr['redemption_state']}): DEPOSIT and WITHDRAWAL entries in the ledger"
        )
    shop = summary.get("shop")
    if shop:
        console.print(
            f"  shop       {shop['projects']} offset projects on sale ({shop['on_sale_kg']} kg "
            f"left); home-001 bought 250 kg for {shop['paid_minor'] / 100:.2f} "
            f"{shop['currency']} through the sandbox provider: order {shop['state']}, "
            f"{', '.join(shop['retired'])} retired for {shop['beneficiary']}"
        )
        console.print(
            f"             pages: {shop['pages']} (search, custody reports, basket, orders, "
            f"statements; /footprint); new buyers register at {shop['register']} (the "
            "verification link is printed above: the demo keeps its mail in memory)"
        )
        solar = shop.get("solar") or {}
        if solar.get("listed"):
            console.print(
                f"  solar      {solar['site']} listed {solar['certificates']} certificates "
                f"({solar['certified_wh']} Wh, {solar['lot_kg']} kg CO2e); {solar['buyer']} "
                f"bought {solar['serials']}: it traces to {solar['tokens']} generation tokens, "
                f"{solar['records_verified']} signed records verified with their devices' keys "
                "and proven minted in the signed ledger"
            )
    m = summary.get("meter")
    if m and m["sites"]:
        console.print(
            f"  meter      {m['sites']} virtual meters, {m['intervals']} intervals: "
            f"{m['generated_wh']} Wh generated, {m['imported_wh']} Wh imported, "
            f"{m['exported_wh']} Wh exported; Green Button feeds "
            f"{'valid' if m['feeds_valid'] else 'INVALID'} against the ESPI schema and "
            f"{'equal to' if m['feeds_equal_ledger'] else 'DIFFERENT from'} the ledger; "
            f"re-imported as revenue data they differ by {m['round_trip_difference_wh']} Wh"
        )
        console.print(f"             API: {m['api']} (intervals, registers, greenbutton)")
    for ev in summary.get("dispatch") or []:
        answers = ", ".join(f"{n} {s}" for s, n in sorted(ev["responses"].items()))
        console.print(
            f"  dispatch   {ev['name']}: {ev['devices']} device(s) ({answers}); "
            f"{ev['control']} asked {ev['requested_w']} W, measured {ev['delivered_w']} W "
            f"(baseline {ev['baseline_w']} W); {ev['delivered_wh']} Wh of flexibility earned "
            f"{ev['reward_minor']} in reward credits"
        )
