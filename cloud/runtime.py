"""The aggregator process: storage, MQTT ingest and the HTTP server, started and stopped together.

Owns: composition of the cloud parts (the composition root for `gridmint cloud serve` and the demo).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

import httpx
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

from cloud.api.app import create_app
from cloud.api.deps import ApiContext
from cloud.domain.ingest_rules import IngestLimits
from cloud.domain.market_checks import MarketConfig
from cloud.domain.openadr import parse_clients
from cloud.domain.rate_limit import BucketLimit
from cloud.gc_policy import LongLivedFreezer
from cloud.ingest_workers import IngestWorkers
from cloud.mqtt_ingest import MqttIngest
from cloud.pki import DeviceCA
from cloud.services.certificates import CertificateService
from cloud.services.device_credentials import DeviceCredentials, sighup_pid_file
from cloud.services.dispatch import DispatchService
from cloud.services.fleet import FleetService
from cloud.services.ingest import IngestService
from cloud.services.ledger import (
    LedgerService,
    default_ledger_key_path,
    default_origin,
    load_or_create_ledger_key,
)
from cloud.services.mailer import Mailer, OutboxMailer, SmtpMailer
from cloud.services.market import MarketService
from cloud.services.openadr import OpenAdrService
from cloud.services.payments import (
    PaymentProvider,
    PaymentService,
    SandboxProvider,
    StripeProvider,
)
from cloud.services.policies import PolicyEngine
from cloud.services.settlement import SettlementService
from cloud.services.timeseries import InfluxSink
from cloud.settings import CloudSettings
from cloud.storage.batteries import BatteryStore
from cloud.storage.certificates_store import CertificateStore
from cloud.storage.dispatch_store import DispatchStore
from cloud.storage.ledger_store import LedgerStore
from cloud.storage.market_store import MarketStore
from cloud.storage.openadr_store import OpenAdrStore
from cloud.storage.payments_store import PaymentStore
from cloud.storage.sequencer_lock import SequencerLock
from cloud.storage.store import Store
from mqttlink import BatchSubscription, client_tls_context
from protocol import topics
from protocol.clock import Clock, SimClock, SystemClock
from protocol.reasons import RejectReason
from rules.ledger import BatteryParams
from rules.market import MatchingMode

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host`."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_config(app: FastAPI, host: str, port: int) -> uvicorn.Config:
    """How the API is served (benchmarks/market_service.py serves it the same way): no access
    log (a line per request, at hundreds of requests per second; errors are still logged), and
    uvicorn's choice of HTTP parser: httptools (C) where installed, else h11 (pure Python).
    """
    return uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
    )


class CloudRuntime:
    """Starts and stops the aggregator's parts."""

    def __init__(self, settings: CloudSettings, clock: Clock | None = None):
        self.settings = settings
        self.clock = clock or SystemClock()
        self.store: Store | None = None
        self.ingest: IngestService | None = None
        self.mqtt: MqttIngest | None = None
        # Ingest worker processes (settings.ingest_workers > 0), partitioned by device.
        self.workers: IngestWorkers | None = None
        self.credentials: DeviceCredentials | None = None
        self.ledger: LedgerService | None = None
        self.market: MarketService | None = None
        self.settlement: SettlementService | None = None
        self.policies: PolicyEngine | None = None
        self._ledger_task: asyncio.Task[None] | None = None
        self.sequencer_lock: SequencerLock | None = None
        self._new_mqtt: Callable[[], MqttIngest] | None = None
        self._mqtt_running = False
        self._crl_task: asyncio.Task[None] | None = None
        self._rec_task: asyncio.Task[None] | None = None
        self._gc_task: asyncio.Task[None] | None = None
        self.influx: InfluxSink | None = None
        # The DERMS (settings.derms_enabled): live fleet and alarms, dispatch events.
        self.fleet: FleetService | None = None
        self.dispatch: DispatchService | None = None
        # The OpenADR 3.0.1 VTN (settings.openadr_clients; docs/openadr.md).
        self.openadr: OpenAdrService | None = None
        self._derms_task: asyncio.Task[None] | None = None
        self._influx_task: asyncio.Task[None] | None = None
        self._server: uvicorn.Server | None = None
        self._server_task: asyncio.Task[None] | None = None
        self._payments_task: asyncio.Task[None] | None = None
        self._payments_http: httpx.AsyncClient | None = None
        self.payments: PaymentService | None = None
        # Outgoing mail (registration's verification links): SMTP when smtp_host is set, else
        # an in-memory outbox (the embedded demo prints its links).
        self.mailer: Mailer | None = None
        self.http_port = settings.http_port

    @property
    def url(self) -> str:
        """Where the dashboard and API are served."""
        return f"http://{self.settings.http_host}:{self.http_port}"

    async def start(self, *, serve_http: bool = True, connect_mqtt: bool = True) -> None:
        """Open and migrate storage, connect to the broker, serve HTTP."""
        s = self.settings
        self.store = await Store.connect(s.database_url)
        await self.store.migrate()
        self.ingest = IngestService(
            self.store,
            s.deployment.encode(),
            self.clock.now,
            IngestLimits(future_skew_s=s.future_skew_s, backfill_window_s=s.backfill_window_s),
            s.max_message_bytes,
            BucketLimit(s.ingest_device_rate_per_s, s.ingest_device_burst),
        )
        if s.device_ca_dir is not None:
            try:
                ca = DeviceCA.load(s.device_ca_dir)
            except FileNotFoundError as exc:
                raise OSError(
                    f"no device CA in {s.device_ca_dir} ({exc.filename}); "
                    "create it with `gridmint cloud pki`"
                ) from None
            self.credentials = DeviceCredentials(
                self.store,
                ca,
                s.device_ca_dir,
                acl_path=s.broker_acl_file,
                crl_path=s.broker_crl_file,
                reload_broker=sighup_pid_file(s.broker_pid_file) if s.broker_pid_file else None,
                aggregator_identity=s.client_id,
                cert_valid_days=s.device_cert_days,
                now=self.clock.now,
            )
            await self.credentials.sync_broker()
        self.ledger = LedgerService(
            LedgerStore(self.store.engine),
            self._ledger_key(),
            default_origin(s.deployment, s.ledger_origin),
            self.clock.now,
            grace_s=s.ledger_grace_s,
            max_wait_s=s.ledger_max_wait_s,
            lookback_s=s.backfill_window_s + 24 * 3600,
            battery=lambda _site: BatteryParams(
                usable_capacity_wh=s.battery_usable_wh,
                soh_permille=s.battery_soh_permille,
                self_discharge_ppm_per_h=s.battery_self_discharge_ppm_per_h,
                round_trip_efficiency_permille=s.battery_round_trip_permille,
            ),
            publish=self._publish_checkpoint,
            registered_batteries=self._registered_batteries,
        )
        # The lock first, then the ledger read: a process that wins the lock from one that just
        # died reads everything that one wrote. Without it, this process is a standby.
        self.sequencer_lock = SequencerLock(self.store.engine, s.database_url, s.deployment)
        self.ledger.writable = await self.sequencer_lock.hold()
        if not self.ledger.writable:
            log.warning("ledger: another process is the ledger sequencer; standing by")
        await self.ledger.load()
        if s.market_enabled:
            market_store = MarketStore(self.store.engine)
            self.market = MarketService(
                self.ledger,
                market_store,
                MarketConfig(
                    interval_s=s.market_interval_s,
                    mode=MatchingMode(s.market_mode),
                    tick=s.market_tick,
                    feed_in_price=s.market_feed_in_price,
                    retail_price=s.market_retail_price,
                    platform_fee=s.market_platform_fee,
                    dso_fee=s.market_dso_fee,
                    gate_closure_s=s.market_gate_closure_s,
                    horizon_s=s.market_horizon_s,
                    forecast_share_permille=s.market_forecast_share_permille,
                    credit_limit_minor=s.market_credit_limit_minor,
                ),
                self.clock.now,
                latitude_deg=s.market_latitude,
                longitude_deg=s.market_longitude,
            )
            await self.market.load()
            self.settlement = SettlementService(
                self.ledger, self.market, market_store, self.clock.now
            )
            self.policies = PolicyEngine(self.market, market_store)
        if s.derms_enabled:
            dstore = DispatchStore(self.store.engine)
            self.fleet = FleetService(
                dstore,
                self.clock.now,
                battery_wh=s.battery_usable_wh,
                battery_max_w=s.battery_max_w,
                stale_ms=int(s.fleet_stale_s * 1000),
            )
            await self.fleet.load()
            self.dispatch = DispatchService(
                dstore,
                self.fleet,
                self._dispatch_key(),
                s.deployment.encode(),
                self._publish_command,
                self.clock.now,
                resend_after_s=s.dispatch_resend_s,
                ledger=self.ledger,
                reward_minor_per_kwh=s.dispatch_reward_per_kwh,
                max_gap_s=5 * s.dispatch_tick_s * getattr(self.clock, "speed", 1.0),
            )
            await self.dispatch.load()
        openadr_clients = parse_clients(s.openadr_clients)
        if openadr_clients:
            self.openadr = OpenAdrService(
                OpenAdrStore(self.store.engine), self.dispatch, openadr_clients, self.clock.now
            )
        if connect_mqtt:
            tls = None
            if s.broker_ca_file is not None:
                tls = client_tls_context(s.broker_ca_file, s.broker_cert_file, s.broker_key_file)
            handler: IngestService | IngestWorkers = self.ingest
            if s.ingest_workers > 0:
                if not isinstance(self.clock, SystemClock | SimClock):
                    raise ValueError("ingest workers need a clock that every process can read")
                self.workers = IngestWorkers(
                    s.ingest_workers,
                    s.database_url,
                    s.deployment.encode(),
                    self.clock,
                    self.ingest.limits,
                    s.max_message_bytes,
                    self.ingest.device_rate,
                )
                await self.workers.start()
                handler = self.workers
            # With workers, two batches overlap: the link gathers, acknowledges and answers one
            # while the workers judge the next (each worker takes its parts in order).
            pipeline = 2 if self.workers is not None else 1
            extra = self._derms_subscriptions()
            self._new_mqtt = lambda: MqttIngest(
                handler, s.broker_url, s.client_id, tls, pipeline=pipeline, extra=extra
            )
            self.mqtt = self._new_mqtt()
            # Ingest follows the sequencer lock: every candidate process uses the same client
            # id and persistent session, so the one that takes over resumes the session (and
            # the messages queued in it) where the dead one left off, and two live processes
            # never kick each other off the broker.
            if self.ledger.writable:
                await self.mqtt.start()
                self._mqtt_running = True
        self._ledger_task = asyncio.create_task(self._close_intervals())
        self._rec_task = asyncio.create_task(self._issue_recs())
        if self.fleet is not None:
            self._derms_task = asyncio.create_task(self._run_derms())
        if s.gc_freeze_s > 0:
            self._gc_task = asyncio.create_task(LongLivedFreezer(s.gc_freeze_s).run())
        if s.influx_url:
            self.influx = InfluxSink(
                self.ledger.store,
                url=s.influx_url,
                token=s.influx_token,
                org=s.influx_org,
                bucket=s.influx_bucket,
                deployment=s.deployment,
            )
            self._influx_task = asyncio.create_task(self._write_timeseries())
        if self.credentials is not None:
            self._crl_task = asyncio.create_task(self._refresh_broker_files())
        if serve_http:
            if self.http_port == 0:
                self.http_port = free_port(s.http_host)
            self.payments = self._payments()
            self.mailer = self._mailer()
            app = create_app(
                self.store,
                admin_token=s.admin_token,
                broker_connected=lambda: self.mqtt is not None and self.mqtt.connected,
                storage_errors=self._storage_errors,
                deployment=s.deployment,
                broker_url=s.broker_url,
                credentials=self.credentials,
                ledger=self.ledger,
                market=self.market,
                key_overlap_s=s.key_overlap_s,
                now=self.clock.now,
                http_rate=BucketLimit(s.http_rate_per_s, s.http_burst),
                max_body_bytes=s.http_max_body_bytes,
                ingest_rate_limited=self._rate_limited,
                fleet=self.fleet,
                dispatch=self.dispatch,
                openadr=self.openadr,
                meter_tolerance_permille=s.meter_tolerance_permille,
                payments=self.payments,
                market_currency=self.settings.market_currency,
                bank_transfer_fee_minor=self.settings.bank_transfer_fee_minor,
                mailer=self.mailer,
                public_base_url=s.public_base_url or f"http://{s.http_host}:{self.http_port}",
                email_link_ttl_s=s.email_link_ttl_s,
                email_link_secret=s.email_link_secret.encode() or None,
                shop_grid_g_co2e_per_kwh=s.shop_grid_g_co2e_per_kwh,
            )
            self._payments_task = asyncio.create_task(self._sweep_payments(app.state.ctx))
            self._server = uvicorn.Server(http_config(app, s.http_host, self.http_port))
            self._server_task = asyncio.create_task(self._server.serve())
            while not self._server.started:
                if self._server_task.done():
                    await self._server_task
                    raise RuntimeError(f"HTTP server could not start on port {self.http_port}")
                await asyncio.sleep(0.02)

    def _derms_subscriptions(self) -> list[BatchSubscription]:
        if self.fleet is None or self.dispatch is None:
            return []
        return [
            # Telemetry is QoS 0 (live values; a lost one is replaced within seconds).
            BatchSubscription(
                topics.subscription(topics.Channel.TELEMETRY),
                self.fleet.handle_telemetry,
                qos=0,
                max_batch=2048,
            ),
            BatchSubscription(
                topics.subscription(topics.Channel.STATUS), self.fleet.handle_status, qos=1
            ),
            BatchSubscription(
                topics.subscription(topics.Channel.ACKS),
                self.dispatch.handle_acks,
                qos=1,
                max_batch=2048,
            ),
        ]

    def _publish_command(self, topic: str, payload: bytes) -> bool:
        # QoS 1 into the device's persistent session: an offline Pi gets it when back.
        if self.mqtt is None or not self._mqtt_running:
            return False
        return self.mqtt.link.publish_nowait(topic, payload, qos=1)

    def _dispatch_key(self) -> Ed25519PrivateKey:
        s = self.settings
        path = s.dispatch_key_file
        if path is None:
            ledger_path = default_ledger_key_path(s.database_url, None)
            if ledger_path is not None:
                path = ledger_path.with_name(ledger_path.name.replace("ledger-key", "dispatch-key"))
        if path is None:
            log.warning(
                "no dispatch_key_file: commands are signed with a key that lives only as long "
                "as this process (the Pis pin it at enrollment)"
            )
            return Ed25519PrivateKey.generate()
        return load_or_create_ledger_key(path)  # the same PKCS#8 file handling

    async def _run_derms(self) -> None:
        # The fleet's periodic checks (silent devices, new token rejections, newly approved
        # devices) and the dispatch tick (board samples, resends). Errors are logged and the
        # next round tries again: the database may be down for a while.
        assert self.fleet is not None
        assert self.dispatch is not None
        s = self.settings
        rounds = 0
        while True:
            await asyncio.sleep(s.dispatch_tick_s)
            rounds += 1
            try:
                await self.dispatch.tick()
                if rounds % 5 == 0:
                    await self.fleet.check()
                if rounds % 30 == 0:
                    await self.fleet.load()
            except Exception as exc:
                log.error("fleet/dispatch: periodic work failed: %s", exc)

    def _storage_errors(self) -> int:
        here = self.ingest.counters.storage_errors if self.ingest else 0
        return here + (self.workers.counters.storage_errors if self.workers else 0)

    def _rate_limited(self) -> int:
        reason = RejectReason.RATE_LIMITED
        here = self.ingest.counters.rejected[reason] if self.ingest else 0
        return here + (self.workers.counters.rejected[reason] if self.workers else 0)

    def _ledger_key(self) -> Ed25519PrivateKey:
        path = default_ledger_key_path(self.settings.database_url, self.settings.ledger_key_file)
        if path is None:
            log.warning(
                "no ledger_key_file: checkpoints are signed with a key that lives only as long "
                "as this process"
            )
            return Ed25519PrivateKey.generate()
        return load_or_create_ledger_key(path)

    def _payments(self) -> PaymentService:
        """The payment port with the configured provider (docs/operations.md, "Payments"): the
        embedded sandbox unless Stripe is configured. The shop becomes its outcomes in
        create_app."""
        s = self.settings
        assert self.store is not None
        provider: PaymentProvider
        if s.payment_provider == "stripe":
            if not (s.stripe_secret_key and s.stripe_webhook_secret):
                raise ValueError(
                    "payment_provider is stripe: set stripe_secret_key and stripe_webhook_secret"
                )
            self._payments_http = httpx.AsyncClient(timeout=30.0)
            provider = StripeProvider(
                s.stripe_api_base, s.stripe_secret_key, s.stripe_webhook_secret, self._payments_http
            )
        else:
            provider = SandboxProvider()
        return PaymentService(provider, PaymentStore(self.store.engine), None, now=self.clock.now)  # type: ignore[arg-type]

    def _mailer(self) -> Mailer:
        s = self.settings
        if not s.smtp_host:
            return OutboxMailer()
        return SmtpMailer(
            s.smtp_host,
            s.smtp_port,
            s.smtp_from,
            starttls=s.smtp_starttls,
            username=s.smtp_username,
            password=s.smtp_password,
            timeout_s=s.smtp_timeout_s,
        )

    async def _sweep_payments(self, ctx: ApiContext) -> None:
        """Every minute: payments open past `payment_timeout_s` fail (the shop releases their
        units), owed outcomes are told again, expired shop reservations are released, and
        credit redemptions whose payout was not confirmed are paid out (once), and monthly
        offset subscriptions buy their month (once)."""
        s = self.settings
        while True:
            await asyncio.sleep(60)
            try:
                if self.payments is not None:
                    await self.payments.expire_stale(s.payment_timeout_s)
                    await self.payments.resend_outcomes()
                if ctx.shop is not None:
                    await ctx.shop.expire()
                if ctx.credits is not None:
                    await ctx.credits.retry_payouts()
                if ctx.subscriptions is not None:
                    await ctx.subscriptions.run_due()
            except Exception as exc:  # the next round tries again
                log.error("payments sweep failed: %s", exc)

    async def _registered_batteries(self) -> dict[str, BatteryParams]:
        assert self.store is not None
        return {
            site: BatteryParams(
                usable_capacity_wh=b.usable_capacity_wh,
                soh_permille=b.soh_permille,
                self_discharge_ppm_per_h=b.self_discharge_ppm_per_h,
                round_trip_efficiency_permille=b.round_trip_permille,
            )
            for site, b in (await BatteryStore(self.store.engine).all()).items()
        }

    async def _publish_checkpoint(self, note: bytes) -> None:
        if self.mqtt is not None and self.mqtt.connected:
            self.mqtt.link.publish_nowait(topics.LEDGER_CHECKPOINT, note, qos=1, retain=True)

    @property
    def is_sequencer(self) -> bool:
        """True while this process holds the sequencer lock and writes the ledger."""
        return self.ledger is not None and self.ledger.writable

    async def _lead(self) -> bool:
        """Hold (or try for) the sequencer lock; on winning it, take over the ledger."""
        assert self.ledger is not None
        assert self.sequencer_lock is not None
        was = self.ledger.writable
        lock = self.sequencer_lock
        if not await lock.hold():
            if was:
                log.error("ledger: no longer the sequencer; standing by")
            self.ledger.writable = False
            # Ingest stops only once another process is known to hold the lock (it takes over
            # the broker session under the same client id; two would keep kicking each other
            # off). While the database is unreachable nobody can store anything: ingest stays
            # and answers storage_error, leaving the messages with the broker.
            if (
                not lock.unreachable
                and self._mqtt_running
                and self.mqtt is not None
                and self._new_mqtt is not None
            ):
                self._mqtt_running = False
                await self.mqtt.stop()
                self.mqtt = self._new_mqtt()  # a link starts once: a fresh one for next time
            return False
        if not was:
            # Another process may have written the ledger (and the market, whose events are
            # ledger entries) meanwhile: read them again if the stored log grew. After a
            # database blip with nobody else writing, the sizes match and nothing is reread.
            if await self.ledger.store.size() != self.ledger.log.size:
                await self.ledger.load()
                if self.market is not None:
                    await self.market.load()
            self.ledger.writable = True
            log.warning("ledger: this process is now the ledger sequencer")
        if not self._mqtt_running and self.mqtt is not None:
            await self.mqtt.start()
            self._mqtt_running = True
        return True

    async def _close_intervals(self) -> None:
        assert self.ledger is not None
        while True:
            try:
                if not await self._lead():
                    await asyncio.sleep(self.settings.sequencer_poll_s)
                    continue
                await self.ledger.close_due()
                if self.market is not None and self.settlement is not None:
                    await self.market.close_due_gates()
                    await self.settlement.settle_due()
                    await self.settlement.sell_surplus()
                if self.policies is not None:
                    await self.policies.run_once()
                await self.ledger.checkpoint_if_grown()
            except Exception as exc:  # the database may be down: try again next round
                log.error("ledger: closing intervals failed: %s", exc)
            await asyncio.sleep(self.settings.ledger_close_every_s)

    async def _issue_recs(self) -> None:
        # 1 MWh renewable energy certificates are bundled as sites reach them; the database
        # refuses any Wh certified twice, so a race with a homeowner's request is harmless.
        assert self.store is not None
        assert self.ledger is not None
        service = CertificateService(CertificateStore(self.store.engine), self.ledger)
        while True:
            await asyncio.sleep(self.settings.rec_issue_every_s)
            if not self.ledger.writable:  # the sequencer issues them
                continue
            try:
                issued = await service.issue_due_recs()
                if issued:
                    log.info("issued %d renewable energy certificate(s)", len(issued))
            except Exception as exc:  # try again next round
                log.error("issuing renewable energy certificates failed: %s", exc)

    async def _write_timeseries(self) -> None:
        # Only the sequencer writes, so a standby does not send the same points twice. A failed
        # write is logged and retried next round from the same watermark; ingest and the ledger
        # never wait on it (it runs in its own task, the HTTP call in a thread).
        assert self.influx is not None
        assert self.ledger is not None
        while True:
            await asyncio.sleep(self.settings.influx_every_s)
            if not self.ledger.writable:
                continue
            try:
                await self.influx.run_once()
            except Exception as exc:
                log.error("time series: writing to InfluxDB failed (retried next round): %s", exc)

    async def _refresh_broker_files(self) -> None:
        # Mosquitto refuses every client once the CRL's nextUpdate passes (valid 24 h), so a
        # fresh one is written and loaded well before, even on days without decisions.
        assert self.credentials is not None
        while True:
            await asyncio.sleep(self.settings.crl_refresh_s)
            try:
                await self.credentials.sync_broker()
            except Exception as exc:  # keep trying; the operator sees the error
                log.error("refreshing the broker's CRL and ACL failed: %s", exc)

    async def stop(self) -> None:
        """Stop serving, disconnect, close storage."""
        tasks = (
            self._ledger_task,
            self._crl_task,
            self._rec_task,
            self._gc_task,
            self._influx_task,
            self._derms_task,
            self._payments_task,
        )
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._server is not None and self._server_task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server_task, 5)
        if self.mqtt is not None and self._mqtt_running:
            await self.mqtt.stop()
        if self.workers is not None:
            await self.workers.stop()
        if self.influx is not None:
            self.influx.close()
        if self._payments_http is not None:
            await self._payments_http.aclose()
        if self.sequencer_lock is not None:
            await self.sequencer_lock.release()
        if self.store is not None:
            await self.store.close()
