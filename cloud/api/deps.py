"""What the routes need, in one place: the `ApiContext` that create_app stores on `app.state.ctx`,
and the FastAPI dependencies that hand its parts, and the caller, to the route functions.

Owns: request-time access to the context and the role checks. A route module declares its routes
on a module-level `APIRouter` and asks for what it uses:

    @router.get("/api/v1/things", tags=["things"])
    async def things(
        store: StoreDep,
        p: Annotated[Principal, Depends(require(Role.INSTALLER, action="list things"))],
    ) -> list[Thing]: ...

`require(...)` works before any app exists: the Auth of cloud.auth (who is calling, 401/403
answers) is looked up in the context when a request arrives.

No `from __future__ import annotations` here: FastAPI reads the signatures of these dependencies,
and their `Annotated[..., Depends(...)]` metadata must be real objects.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.templating import Jinja2Templates

# The two security schemes Auth's own dependencies use: declaring the same objects keeps the
# OpenAPI document's "HTTPBearer" and "APIKeyCookie" schemes (cloud.auth keeps them private).
from cloud.api.limits import HttpLimitCounters
from cloud.auth import Auth, Principal, Role, bearer_scheme, session_cookie
from cloud.domain.certificates import DEFAULT_GRID_G_CO2_PER_KWH
from cloud.services.carbon_shop import ShopService
from cloud.services.certificates import CertificateService
from cloud.services.credits import CreditService
from cloud.services.device_credentials import DeviceCredentials
from cloud.services.dispatch import DispatchService
from cloud.services.fleet import FleetService
from cloud.services.footprint import FootprintService
from cloud.services.ledger import LedgerService
from cloud.services.market import MarketService
from cloud.services.openadr import OpenAdrService
from cloud.services.payments import PaymentService
from cloud.services.reconciliation import ReconciliationService
from cloud.services.registration import RegistrationService
from cloud.services.shop_subscriptions import SubscriptionService
from cloud.services.utility_access import UtilityAccess
from cloud.services.virtual_meter import MeterService
from cloud.storage.accounts import AccountStore
from cloud.storage.claims import ClaimStore
from cloud.storage.device_views import DeviceViews
from cloud.storage.store import Store

__all__ = [
    "ANYONE",
    "FLEET",
    "SHOP_ROLES",
    "AccountsDep",
    "ApiContext",
    "CertificatesDep",
    "ClaimsDep",
    "CredentialsDep",
    "CtxDep",
    "DeviceViewsDep",
    "DispatchDep",
    "FleetDep",
    "LedgerDep",
    "MarketDep",
    "OptionalPrincipalDep",
    "PrincipalDep",
    "StoreDep",
    "TemplatesDep",
    "current_principal",
    "get_ctx",
    "optional_principal",
    "refuse_unverified_email",
    "require",
]

# Role sets the routes share (admins always pass `require`, so they are not listed).
FLEET = (Role.INSTALLER, Role.APPROVER, Role.GRID_OPERATOR)
ANYONE = (Role.HOMEOWNER, *FLEET)
# The carbon shop's own roles (cloud/api/shop_routes.py): besides the shop they may only read
# their account and log out; every other endpoint refuses them.
SHOP_ROLES = (Role.PROVIDER, Role.BUYER)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiContext:
    """Everything the routes of one app use: stores, services, auth, templates, settings, clocks.

    Optional parts (`credentials`, `ledger`, `certificates`, `market`) are None when this
    process runs without them; the routes that need them answer 404 or 503.
    """

    store: Store
    accounts: AccountStore
    auth: Auth
    templates: Jinja2Templates
    claims: ClaimStore
    device_views: DeviceViews
    credentials: DeviceCredentials | None
    ledger: LedgerService | None
    certificates: CertificateService | None
    market: MarketService | None
    deployment: str
    broker_url: str
    key_overlap_s: int
    secure_cookies: bool
    stream_interval_s: float
    broker_connected: Callable[[], bool]
    storage_errors: Callable[[], int]
    now: Callable[[], float]
    co2_factor: int = DEFAULT_GRID_G_CO2_PER_KWH
    # Messages ingest refused as rate_limited since start (all workers), and the HTTP limits'.
    ingest_rate_limited: Callable[[], int] = lambda: 0
    http_limits: HttpLimitCounters = field(default_factory=HttpLimitCounters)
    # The DERMS (None without it: its routes answer 503).
    fleet: FleetService | None = None
    dispatch: DispatchService | None = None
    # The OpenADR 3 VTN (cloud/api/openadr_routes.py); None: its routes answer 404.
    openadr: OpenAdrService | None = None
    # The virtual smart meter (cloud/api/meter_routes.py); create_app always builds one.
    meter: MeterService | None = None
    reconciliation: ReconciliationService | None = None
    # Utility clients and homeowners' grants (cloud/api/connect_auth.py); create_app always
    # builds it, None only in a context made by hand (its routes then answer 503).
    utility_access: UtilityAccess | None = None
    # Payments (cloud/api/payments_routes.py); None: its routes answer 503.
    payments: PaymentService | None = None
    # The retail carbon shop (cloud/api/shop_routes.py); create_app always builds one (its
    # payments answer 503 until a payment port is wired in). None: its routes answer 503.
    shop: ShopService | None = None
    # Market payment credits bought and cashed through the payment port
    # (cloud/api/credits_routes.py); None without a ledger or a port: its routes answer 503.
    credits: CreditService | None = None
    # Monthly offset subscriptions (cloud/api/subscription_routes.py); create_app always builds
    # them over its shop. None: their routes answer 503.
    subscriptions: SubscriptionService | None = None
    # Self-registration and email verification (cloud/api/registration_routes.py); create_app
    # always builds one. None: its routes answer 503 and checkouts are not held back.
    registration: RegistrationService | None = None
    # Accounts' carbon footprints (cloud/api/footprint_routes.py); create_app always builds
    # one. None: its routes answer 503.
    footprint: FootprintService | None = None


# The dependencies are coroutines so FastAPI calls them inline (a plain def runs in a thread).


async def get_ctx(request: Request) -> ApiContext:
    """The context of the app serving this request (set by cloud.api.app.create_app)."""
    ctx = getattr(request.app.state, "ctx", None)
    if not isinstance(ctx, ApiContext):
        raise RuntimeError("app.state.ctx is not set: build the app with cloud.api.app.create_app")
    return ctx


CtxDep = Annotated[ApiContext, Depends(get_ctx)]


async def _store(ctx: CtxDep) -> Store:
    return ctx.store


async def _accounts(ctx: CtxDep) -> AccountStore:
    return ctx.accounts


async def _templates(ctx: CtxDep) -> Jinja2Templates:
    return ctx.templates


async def _claims(ctx: CtxDep) -> ClaimStore:
    return ctx.claims


async def _device_views(ctx: CtxDep) -> DeviceViews:
    return ctx.device_views


async def _credentials(ctx: CtxDep) -> DeviceCredentials | None:
    return ctx.credentials


async def _ledger(ctx: CtxDep) -> LedgerService | None:
    return ctx.ledger


async def _certificates(ctx: CtxDep) -> CertificateService | None:
    return ctx.certificates


async def _market(ctx: CtxDep) -> MarketService | None:
    return ctx.market


async def _fleet(ctx: CtxDep) -> FleetService | None:
    return ctx.fleet


async def _dispatch(ctx: CtxDep) -> DispatchService | None:
    return ctx.dispatch


StoreDep = Annotated[Store, Depends(_store)]
AccountsDep = Annotated[AccountStore, Depends(_accounts)]
TemplatesDep = Annotated[Jinja2Templates, Depends(_templates)]
ClaimsDep = Annotated[ClaimStore, Depends(_claims)]
DeviceViewsDep = Annotated[DeviceViews, Depends(_device_views)]
# None when this process runs without them; the route decides what that means (404, 503, ...).
CredentialsDep = Annotated[DeviceCredentials | None, Depends(_credentials)]
LedgerDep = Annotated[LedgerService | None, Depends(_ledger)]
CertificatesDep = Annotated[CertificateService | None, Depends(_certificates)]
MarketDep = Annotated[MarketService | None, Depends(_market)]
FleetDep = Annotated[FleetService | None, Depends(_fleet)]
DispatchDep = Annotated[DispatchService | None, Depends(_dispatch)]


# Who is calling: the app's Auth (cloud.auth) decides; these only find it at request time.


async def optional_principal(
    ctx: CtxDep,
    authorization: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    session: Annotated[str | None, Depends(session_cookie)],
) -> Principal | None:
    """The caller, or None when no credentials were sent; bad credentials are 401/403.

    `Authorization: Bearer` wins over the session cookie when both are present.
    """
    return await ctx.auth.optional_principal(authorization, session)


OptionalPrincipalDep = Annotated[Principal | None, Depends(optional_principal)]


async def current_principal(ctx: CtxDep, principal: OptionalPrincipalDep) -> Principal:
    """The caller; 401 when no credentials were sent."""
    return await ctx.auth.current_principal(principal)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


async def refuse_unverified_email(ctx: ApiContext, account_id: str) -> None:
    """403 "verify your email address before buying: ..." while the account's email is not
    verified (a self-registered buyer may browse, not pay). Every route that takes a shopper's
    money calls it first."""
    if ctx.registration is None:
        return
    refusal = await ctx.registration.checkout_refusal(account_id)
    if refusal is not None:
        raise HTTPException(403, refusal)


def require(*roles: Role, action: str = "use this endpoint") -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets through only `roles` (admins always) and returns the caller.

    The app's Auth decides, so the 401 and 403 answers are its own: "role homeowner may not
    <action>". One dependency over the two credential schemes, not a chain of three through
    `current_principal` and `optional_principal`: FastAPI's solving of each dependency was a
    measurable part of an order's CPU. The schemes are the same objects, so the OpenAPI
    document is unchanged.
    """
    allowed = frozenset(roles) | {Role.ADMIN}

    async def dependency(
        ctx: CtxDep,
        authorization: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
        session: Annotated[str | None, Depends(session_cookie)],
    ) -> Principal:
        auth = ctx.auth
        principal = await auth.current_principal(
            await auth.optional_principal(authorization, session)
        )
        return auth.check_role(principal, allowed, action)

    return dependency
