"""The aggregator's HTTP face: JSON API (OpenAPI at /openapi.json), the web pages, SSE.

Owns: the app's assembly. The routes live in one `APIRouter` module per area (`*_routes.py`);
what they need reaches them through cloud.api.deps, from the `ApiContext` built here. No
business rules live in the API; it reads through cloud.storage and the services.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from cloud.api import (
    accounts_routes,
    analytics_pages_routes,
    certificates_routes,
    connect_auth_routes,
    connect_meter_routes,
    credits_routes,
    derms_pages_routes,
    device_routes,
    dispatch_routes,
    fleet_live_routes,
    fleet_routes,
    footprint_routes,
    home_routes,
    ledger_routes,
    market_page_routes,
    market_routes,
    meter_routes,
    openadr_routes,
    ops_routes,
    pages_routes,
    payments_routes,
    registration_routes,
    shop_pages_routes,
    shop_routes,
    site_live_routes,
    sites_routes,
    solar_listing_routes,
    subscription_routes,
    tokens_routes,
)
from cloud.api.deps import ApiContext
from cloud.api.limits import HttpLimitCounters, InputLimits
from cloud.api.templating import STATIC_DIR, make_templates
from cloud.auth import make_auth
from cloud.domain.certificates import DEFAULT_GRID_G_CO2_PER_KWH
from cloud.domain.payments import Money
from cloud.domain.rate_limit import BucketLimit
from cloud.services.carbon_shop import ShopService, no_payment_provider
from cloud.services.certificates import CertificateService
from cloud.services.credits import REF_PREFIX, CreditService
from cloud.services.device_credentials import DeviceCredentials
from cloud.services.dispatch import DispatchService
from cloud.services.fleet import FleetService
from cloud.services.footprint import FootprintService
from cloud.services.ledger import LedgerService, NotSequencerError
from cloud.services.mailer import Mailer, OutboxMailer
from cloud.services.market import MarketService
from cloud.services.openadr import OpenAdrService
from cloud.services.payments import PaymentOutcomes, PaymentService
from cloud.services.reconciliation import ReconciliationService
from cloud.services.registration import DEFAULT_LINK_TTL_S, RegistrationService
from cloud.services.shop_subscriptions import SubscriptionService
from cloud.services.utility_access import UtilityAccess
from cloud.services.virtual_meter import MeterService
from cloud.storage.accounts import AccountStore
from cloud.storage.carbon_store import CarbonStore
from cloud.storage.certificates_store import CertificateStore
from cloud.storage.claims import ClaimStore
from cloud.storage.credits_store import CreditStore
from cloud.storage.device_views import DeviceViews
from cloud.storage.dispatch_store import DispatchStore
from cloud.storage.footprint_store import FootprintStore
from cloud.storage.meter_store import MeterStore
from cloud.storage.revenue_store import RevenueStore
from cloud.storage.store import Store
from cloud.storage.subscriptions_store import SubscriptionStore
from cloud.storage.utility_store import UtilityStore

# In this order (it is the OpenAPI document's order of paths).
ROUTERS = (
    ops_routes.router,
    fleet_routes.router,
    tokens_routes.router,
    device_routes.router,
    ledger_routes.router,
    certificates_routes.router,
    market_routes.router,
    pages_routes.router,
    home_routes.router,
    market_page_routes.router,
    accounts_routes.router,
    sites_routes.router,
    fleet_live_routes.router,
    dispatch_routes.router,
    derms_pages_routes.router,
    site_live_routes.router,
    openadr_routes.router,
    meter_routes.router,
    connect_auth_routes.router,
    connect_meter_routes.router,
    analytics_pages_routes.router,
    payments_routes.router,
    shop_routes.router,
    credits_routes.router,
    subscription_routes.router,
    registration_routes.router,
    footprint_routes.router,
    shop_pages_routes.router,
    solar_listing_routes.router,
)


class _ShopOutcomes:
    """The payment port's outcomes: a shop order's go to the shop; any other ref's (a market
    credit top-up, say) to the outcomes the port was built with."""

    def __init__(self, shop: ShopService, others: PaymentOutcomes | None) -> None:
        self.shop = shop
        self.others = others

    async def _is_order(self, ref: str) -> bool:
        try:
            await self.shop.order(ref)
        except Exception:  # not one of the shop's orders
            return False
        return True

    async def succeeded(self, ref: str, payment_id: str) -> None:
        if await self._is_order(ref):
            await self.shop.succeeded(ref, payment_id)
        elif self.others is not None:
            await self.others.succeeded(ref, payment_id)

    async def failed(self, ref: str, payment_id: str, reason: str) -> None:
        if await self._is_order(ref):
            await self.shop.failed(ref, payment_id, reason)
        elif self.others is not None:
            await self.others.failed(ref, payment_id, reason)


class _CreditOutcomes:
    """The payment port's outcomes for market-credit top-ups (refs crd_...); any other ref's
    to the outcomes the port was built with."""

    def __init__(self, credits: CreditService, others: PaymentOutcomes | None) -> None:
        self.credits = credits
        self.others = others

    async def succeeded(self, ref: str, payment_id: str) -> None:
        if ref.startswith(REF_PREFIX):
            await self.credits.succeeded(ref, payment_id)
        elif self.others is not None:
            await self.others.succeeded(ref, payment_id)

    async def failed(self, ref: str, payment_id: str, reason: str) -> None:
        if ref.startswith(REF_PREFIX):
            await self.credits.failed(ref, payment_id, reason)
        elif self.others is not None:
            await self.others.failed(ref, payment_id, reason)


def _credits(
    store: Store,
    ledger: LedgerService | None,
    payments: PaymentService | None,
    market: MarketService | None,
    currency: str,
    fee_minor: int,
    now: Callable[[], float],
) -> CreditService | None:
    """Market credits through the payment port: the port tells the credits of their top-ups'
    outcomes, and only a transfer's homeowner may press the sandbox's pay button for it."""
    if ledger is None or payments is None:
        return None
    port = payments
    credits = CreditService(
        CreditStore(store.engine),
        ledger,
        port,
        currency=currency,
        fee_minor=fee_minor,
        committed=(lambda _site: 0) if market is None else market.held_credits,
        now=now,
    )
    others_owner = port.owner_of

    async def owner_of(ref: str) -> str | None:
        if ref.startswith(REF_PREFIX):
            return await credits.owner_of(ref)
        return None if others_owner is None else await others_owner(ref)

    port.outcomes = _CreditOutcomes(credits, port.outcomes)
    port.owner_of = owner_of
    return credits


def _shop(
    store: Store,
    payments: PaymentService | None,
    now: Callable[[], float],
    ledger: LedgerService | None = None,
    deployment: str = "",
    grid_g_co2e_per_kwh: int = DEFAULT_GRID_G_CO2_PER_KWH,
) -> ShopService:
    """The carbon shop wired to the payment port: a checkout opens a payment for the order,
    the port tells the shop when it succeeded or failed (the shop is its `outcomes`), and only
    an order's buyer may press the sandbox's pay button. Without a port every checkout is a
    503 and reserves nothing. With the ledger, the shop writes its listings, paid orders and
    retirements as ledger leaves and homeowners may list their certificates."""
    on_ledger: dict[str, Any] = {
        "ledger": ledger,
        "certificates": None if ledger is None else CertificateStore(store.engine),
        "deployment": deployment,
        "grid_g_co2e_per_kwh": grid_g_co2e_per_kwh,
    }
    if payments is None:
        return ShopService(CarbonStore(store.engine), no_payment_provider, now=now, **on_ledger)
    port = payments

    async def start_payment(ref: str, amount_minor: int, currency: str, description: str) -> str:
        started = await port.start(ref, Money(amount_minor, currency), description)
        return started.payment_id

    shop = ShopService(CarbonStore(store.engine), start_payment, now=now, **on_ledger)

    others_owner = port.owner_of

    async def owner_of(ref: str) -> str | None:
        try:
            return (await shop.order(ref)).buyer_account_id
        except Exception:  # not one of the shop's orders
            return None if others_owner is None else await others_owner(ref)

    port.outcomes = _ShopOutcomes(shop, port.outcomes)
    port.owner_of = owner_of
    return shop


def create_app(
    store: Store,
    *,
    accounts: AccountStore | None = None,
    admin_token: str = "",
    broker_connected: Callable[[], bool] = lambda: False,
    storage_errors: Callable[[], int] = lambda: 0,
    stream_interval_s: float = 1.0,
    secure_cookies: bool = False,
    deployment: str = "",
    broker_url: str = "",
    credentials: DeviceCredentials | None = None,
    ledger: LedgerService | None = None,
    market: MarketService | None = None,
    key_overlap_s: int = 24 * 3600,
    now: Callable[[], float] = time.time,
    http_rate: BucketLimit | None = None,
    max_body_bytes: int | None = None,
    ingest_rate_limited: Callable[[], int] = lambda: 0,
    fleet: FleetService | None = None,
    dispatch: DispatchService | None = None,
    openadr: OpenAdrService | None = None,
    meter_tolerance_permille: int = 10,
    payments: PaymentService | None = None,
    market_currency: str = "EUR",
    bank_transfer_fee_minor: int = 0,
    mailer: Mailer | None = None,
    public_base_url: str = "http://localhost:8000",
    email_link_ttl_s: int = DEFAULT_LINK_TTL_S,
    email_link_secret: bytes | None = None,
    shop_grid_g_co2e_per_kwh: int = DEFAULT_GRID_G_CO2_PER_KWH,
) -> FastAPI:
    """Build the FastAPI application around a store.

    Every endpoint but /healthz, login and sign-up needs a principal (bearer token, session
    cookie or API key); the role each endpoint allows is in its `require(...)` (cloud.api.deps).
    With `http_rate` or `max_body_bytes`, requests over them are answered 429 or 413
    (cloud.api.limits); without them (tests, benchmarks) nothing is limited.
    With `openadr`, the OpenADR 3.0.1 VTN answers under /openadr3/3.0.1 (docs/openadr.md).
    With `payments`, the payment routes work (docs/operations.md, "Payments"); else 503.
    Registration mails go through `mailer` (without one: an in-memory outbox), with links to
    `public_base_url` that work for `email_link_ttl_s`, signed with `email_link_secret` (or the
    deployment's own key in the database).
    """
    accounts = accounts or AccountStore(store.engine)
    meter = MeterService(MeterStore(store.engine), ledger)
    credits = _credits(
        store, ledger, payments, market, market_currency, bank_transfer_fee_minor, now
    )
    shop = _shop(store, payments, now, ledger, deployment, shop_grid_g_co2e_per_kwh)
    ctx = ApiContext(
        store=store,
        accounts=accounts,
        auth=make_auth(accounts, admin_token),
        templates=make_templates(),
        claims=ClaimStore(store.engine),
        device_views=DeviceViews(store.engine),
        credentials=credentials,
        ledger=ledger,
        certificates=None
        if ledger is None
        else CertificateService(CertificateStore(store.engine), ledger),
        market=market,
        deployment=deployment,
        broker_url=broker_url,
        key_overlap_s=key_overlap_s,
        secure_cookies=secure_cookies,
        stream_interval_s=stream_interval_s,
        broker_connected=broker_connected,
        storage_errors=storage_errors,
        now=now,
        ingest_rate_limited=ingest_rate_limited,
        http_limits=HttpLimitCounters(),
        fleet=fleet,
        dispatch=dispatch,
        openadr=openadr,
        meter=meter,
        reconciliation=ReconciliationService(
            meter,
            RevenueStore(store.engine),
            DispatchStore(store.engine),
            tolerance_permille=meter_tolerance_permille,
            now=now,
        ),
        utility_access=UtilityAccess(UtilityStore(store.engine), now),
        payments=payments,
        shop=shop,
        credits=credits,
        subscriptions=SubscriptionService(SubscriptionStore(store.engine), shop, now),
        registration=RegistrationService(
            accounts,
            mailer if mailer is not None else OutboxMailer(),
            public_base_url=public_base_url,
            link_ttl_s=email_link_ttl_s,
            secret=email_link_secret,
            now=now,
        ),
        footprint=FootprintService(FootprintStore(store.engine), now),
    )
    app = FastAPI(
        title="gridmint aggregator",
        version="0.1.0",
        description="Signed kWh generation tokens from edge agents: fleet, tokens, ingest stats.",
    )
    app.state.ctx = ctx

    @app.exception_handler(NotSequencerError)
    async def _standby(_request: Request, exc: NotSequencerError) -> JSONResponse:
        # A standby's ledger is not the one being written: the client retries at the
        # sequencer (or here, once this process has taken over).
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "2"})

    openadr_routes.install_error_handlers(app)

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    for router in ROUTERS:
        app.include_router(router)
    if http_rate is not None or max_body_bytes is not None:
        app.add_middleware(
            InputLimits,
            rate=http_rate or BucketLimit(0, 1),
            max_body_bytes=max_body_bytes or 1 << 62,
            counters=ctx.http_limits,
        )
    return app
