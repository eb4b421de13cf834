"""Monthly offset subscriptions: every calendar month (UTC) each active subscription buys its
kilograms of its project through the shop's ordinary checkout (docs/carbon-shop.md,
"Subscriptions").

Owns: creating and cancelling subscriptions and the monthly renewal. The month's run row is
claimed before the order is made (cloud.storage.subscriptions_store), so a month is bought at
most once even if two renewals race. The order then lives like any other: reserved, paid through
the payment port (the buyer pays it: with the sandbox on the orders page; a saved card charged
off-session by Stripe is not built), retired for the beneficiary, or released when the payment
fails or times out. A month that cannot be bought (no lot with the kilograms in the currency, the
project withdrawn) is recorded as skipped with the reason and not tried again that month.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from cloud.domain.carbon_shop import SELLABLE, ProjectStatus, ShopError, check_currency
from cloud.domain.shop_subscriptions import (
    LotOffer,
    SubscriptionError,
    check_kg_per_month,
    period_of,
    pick_lot,
)
from cloud.services.carbon_shop import ShopInvalid, ShopNotFound, ShopService
from cloud.storage.subscriptions_store import StoredRun, StoredSubscription, SubscriptionStore


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    subscription: StoredSubscription
    runs: tuple[StoredRun, ...]


class SubscriptionService:
    """Subscriptions over one shop."""

    def __init__(
        self, store: SubscriptionStore, shop: ShopService, now: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.shop = shop
        self.now = now

    def _now_ms(self) -> int:
        return int(self.now() * 1000)

    async def create(
        self,
        buyer_account_id: str,
        project_id: str,
        kg_per_month: int,
        currency: str,
        beneficiary: str,
        reason: str = "",
    ) -> SubscriptionView:
        """Subscribe to `kg_per_month` of an active project, and buy this month's at once.
        ShopInvalid: bad amount, currency or beneficiary; ShopNotFound: unknown project."""
        try:
            check_kg_per_month(kg_per_month)
            check_currency(currency)
        except (SubscriptionError, ShopError) as exc:
            raise ShopInvalid(str(exc)) from None
        if not beneficiary.strip():
            raise ShopInvalid("a subscription names the beneficiary of its retirements")
        project = (await self.shop.project(project_id)).project  # ShopNotFound if unknown
        if project.status != ProjectStatus.ACTIVE.value:
            raise ShopInvalid(f"project {project_id} is {project.status}")
        now_ms = self._now_ms()
        s = StoredSubscription(
            subscription_id="sub_" + secrets.token_hex(8),
            buyer_account_id=buyer_account_id,
            project_id=project_id,
            kg_per_month=kg_per_month,
            currency=currency,
            beneficiary=beneficiary.strip(),
            reason=reason.strip(),
            state="active",
            created_ms=now_ms,
            updated_ms=now_ms,
        )
        await self.store.add(s)
        await self._run(s, period_of(now_ms))
        return await self.view(buyer_account_id, s.subscription_id)

    async def cancel(self, buyer_account_id: str, subscription_id: str) -> SubscriptionView:
        """Stop renewing (this month's order, if any, stays as it is)."""
        await self.view(buyer_account_id, subscription_id)  # ShopNotFound unless the buyer's
        await self.store.cancel(subscription_id, self._now_ms())
        return await self.view(buyer_account_id, subscription_id)

    async def view(self, buyer_account_id: str | None, subscription_id: str) -> SubscriptionView:
        s = await self.store.get(subscription_id)
        if s is None or (buyer_account_id is not None and s.buyer_account_id != buyer_account_id):
            raise ShopNotFound(f"subscription {subscription_id} does not exist")
        return SubscriptionView(s, tuple(await self.store.runs([subscription_id])))

    async def of_buyer(self, buyer_account_id: str) -> list[SubscriptionView]:
        subs = await self.store.of_buyer(buyer_account_id)
        runs = await self.store.runs([s.subscription_id for s in subs])
        return [
            SubscriptionView(s, tuple(r for r in runs if r.subscription_id == s.subscription_id))
            for s in subs
        ]

    async def run_due(self) -> list[StoredRun]:
        """Buy this month's kilograms for every active subscription that has no run this
        month; the runs this call made."""
        period = period_of(self._now_ms())
        made = []
        for s in await self.store.due(period):
            run = await self._run(s, period)
            if run is not None:
                made.append(run)
        return made

    async def _run(self, s: StoredSubscription, period: str) -> StoredRun | None:
        if not await self.store.claim_run(s.subscription_id, period, self._now_ms()):
            return None  # another renewal has this month
        order_id: str | None = None
        try:
            view = await self.shop.project(s.project_id)
            if ProjectStatus(view.project.status) not in SELLABLE:
                raise SubscriptionError(f"the project is {view.project.status}")
            lot = pick_lot(
                [
                    LotOffer(
                        x.lot_id,
                        x.currency,
                        x.price_minor_per_t,
                        x.available_kg,
                        x.created_ms,
                    )
                    for x in view.lots
                ],
                s.kg_per_month,
                s.currency,
            )
            order = await self.shop.checkout(
                s.buyer_account_id,
                [(lot.lot_id, s.kg_per_month)],
                s.currency,
                s.beneficiary,
                s.reason or f"monthly subscription {s.subscription_id} ({period})",
            )
            order_id = order.order_id
            detail = f"order {order_id} reserved, waiting for its payment"
        except Exception as exc:  # any refusal skips this month, with its reason kept
            detail = f"skipped: {exc}"
        await self.store.finish_run(s.subscription_id, period, order_id, detail)
        return StoredRun(s.subscription_id, period, order_id, detail, self._now_ms())
