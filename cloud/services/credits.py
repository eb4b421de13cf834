"""Market payment credits bought and cashed through the payment port (docs/market.md, "Payment
credits"), with the flat bank-transfer fee of cloud.domain.payments.bank_transfer.

Owns: the two flows and their ledger entries.

- **Top-up**: the transfer is stored (pending) before the payment is opened; the port tells us
  when the payment succeeded (a verified provider event, never the browser), and then, in one
  unit of work, the ledger gets a DEPOSIT of the net amount naming the transfer and the transfer
  becomes complete. The move out of `pending` is conditional, so a second success (a webhook
  redelivered, outcomes resent after a restart) deposits nothing. A failed payment marks the
  transfer failed; nothing was deposited.
- **Redemption**: the free credits are checked (balance less what bids and unsettled trades
  hold), then one unit of work writes the WITHDRAWAL of the gross amount and the transfer
  (paying_out): the ledger's own rule refuses an overdraft. Only then is the net paid out
  through the port (idempotent per transfer, so `retry_payouts` after a crash pays once). A
  payout the provider refuses is given back: a DEPOSIT naming the transfer, transfer returned.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.domain.payments import Money, PaymentError, bank_transfer
from cloud.services.ledger import LedgerService
from cloud.services.payments import PaymentService, StartedPayment
from cloud.storage.credits_store import CreditStore, CreditTransfer
from rules.ledger import Entry, LedgerEngine, LedgerRuleError, site_account

TOP_UP = "top_up"
REDEMPTION = "redemption"
REF_PREFIX = "crd_"  # the payment refs (and ledger refs) of credit transfers


class CreditInvalid(ValueError):
    """The request breaks a rule (amount, currency, fee); the message says which."""


class CreditConflict(Exception):
    """Not enough free credits, or the payout was refused."""


class CreditsUnavailable(RuntimeError):
    """No payment port (or no ledger) in this process."""


class _AlreadyMoved(Exception):
    """The transfer had left the state this step starts from: nothing to do."""


@dataclass(frozen=True, slots=True)
class CreditBalance:
    """A site's payment credits: the ledger balance, what bids and unsettled trades hold, and
    what is free to redeem (minor units of the market currency)."""

    site_id: str
    currency: str
    balance_minor: int
    committed_minor: int

    @property
    def free_minor(self) -> int:
        return max(0, self.balance_minor - self.committed_minor)


class CreditService:
    """Top-ups and redemptions of one aggregator's market credits."""

    def __init__(
        self,
        store: CreditStore,
        ledger: LedgerService,
        payments: PaymentService | None,
        *,
        currency: str,
        fee_minor: int,
        committed: Callable[[str], int] = lambda _site: 0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.payments = payments
        self.currency = currency
        self.fee_minor = fee_minor
        self.committed = committed  # credits the market holds for a site's bids and trades
        self.now = now

    def _now_ms(self) -> int:
        return int(self.now() * 1000)

    def _port(self) -> PaymentService:
        if self.payments is None:
            raise CreditsUnavailable("no payment provider is configured")
        return self.payments

    def _transfer(self, gross_minor: int, currency: str) -> tuple[Money, Money, Money]:
        if currency != self.currency:
            raise CreditInvalid(
                f"market credits are in {self.currency}; this request is in {currency}"
            )
        if isinstance(gross_minor, bool) or not isinstance(gross_minor, int):
            raise CreditInvalid("the amount is a whole number of minor units")
        try:
            t = bank_transfer(Money(gross_minor, currency), self.fee_minor)
        except PaymentError as exc:
            raise CreditInvalid(str(exc)) from None
        return t.gross, t.fee, t.net

    def balance(self, site_id: str) -> CreditBalance:
        return CreditBalance(
            site_id,
            self.currency,
            self.ledger.engine.state.balance(site_account(site_id)),
            self.committed(site_id),
        )

    async def transfers(self, site_id: str) -> list[CreditTransfer]:
        return await self.store.for_site(site_id)

    async def owner_of(self, ref: str) -> str | None:
        """The account that asked for transfer `ref` (who may pay it in the sandbox)."""
        if not ref.startswith(REF_PREFIX):
            return None
        t = await self.store.get(ref)
        return None if t is None else t.account_id

    # top-ups ------------------------------------------------------------------------------

    async def top_up(
        self, account_id: str, site_id: str, gross_minor: int, currency: str
    ) -> tuple[CreditTransfer, StartedPayment]:
        """Store a pending top-up of `gross_minor` (the fee comes off it) and open its payment.
        CreditInvalid for a bad amount or currency; CreditConflict if the port refused."""
        port = self._port()
        gross, fee, net = self._transfer(gross_minor, currency)
        now_ms = self._now_ms()
        t = CreditTransfer(
            transfer_id=REF_PREFIX + secrets.token_hex(10),
            kind=TOP_UP,
            site_id=site_id,
            account_id=account_id,
            currency=currency,
            gross_minor=gross.amount_minor,
            fee_minor=fee.amount_minor,
            net_minor=net.amount_minor,
            state="pending",
            payment_id=None,
            payout_to="",
            payout_id=None,
            ledger_seq=None,
            return_seq=None,
            detail="",
            created_ms=now_ms,
            updated_ms=now_ms,
        )
        await self.store.insert(t)
        try:
            started = await port.start(
                t.transfer_id, gross, f"Market credits for {site_id}: {net} after a {fee} fee"
            )
        except PaymentError as exc:
            await self.store.move(
                t.transfer_id, ["pending"], "failed", self._now_ms(), detail=str(exc)
            )
            raise CreditConflict(str(exc)) from None
        await self.store.move(
            t.transfer_id, ["pending"], "pending", self._now_ms(), payment_id=started.payment_id
        )
        got = await self.store.get(t.transfer_id)
        assert got is not None
        return got, started

    async def succeeded(self, ref: str, payment_id: str) -> None:
        """The top-up's payment succeeded: deposit the net credits, once."""
        t = await self.store.get(ref)
        if t is None or t.kind != TOP_UP or t.state != "pending":
            return
        await self._deposit_and_move(
            t, t.net_minor, "pending", "complete", "ledger_seq", payment_id=payment_id
        )

    async def failed(self, ref: str, payment_id: str, reason: str) -> None:
        """The top-up's payment failed: nothing was deposited; the transfer says why."""
        t = await self.store.get(ref)
        if t is None or t.kind != TOP_UP:
            return
        await self.store.move(
            ref, ["pending"], "failed", self._now_ms(), payment_id=payment_id, detail=reason
        )

    # redemptions --------------------------------------------------------------------------

    async def redeem(
        self, account_id: str, site_id: str, gross_minor: int, currency: str, payout_to: str
    ) -> CreditTransfer:
        """Take `gross_minor` credits off the site and pay them (less the fee) to `payout_to`.
        CreditInvalid: bad amount, currency or destination; CreditConflict: not enough free
        credits, or the provider refused the payout (the credits are then given back)."""
        self._port()  # no port, no redemption: refuse before the ledger changes
        gross, fee, net = self._transfer(gross_minor, currency)
        payout_to = payout_to.strip()
        if not payout_to or len(payout_to) > 100:
            raise CreditInvalid("say where the money goes (1 to 100 characters)")
        free = self.balance(site_id).free_minor
        if gross.amount_minor > free:
            raise CreditConflict(
                f"site {site_id} has {Money(free, currency)} of credits free to redeem "
                f"({Money(gross.amount_minor, currency)} were asked for; bids and unsettled "
                "trades hold the rest)"
            )
        now_ms = self._now_ms()
        t = CreditTransfer(
            transfer_id=REF_PREFIX + secrets.token_hex(10),
            kind=REDEMPTION,
            site_id=site_id,
            account_id=account_id,
            currency=currency,
            gross_minor=gross.amount_minor,
            fee_minor=fee.amount_minor,
            net_minor=net.amount_minor,
            state="paying_out",
            payment_id=None,
            payout_to=payout_to,
            payout_id=None,
            ledger_seq=None,
            return_seq=None,
            detail="",
            created_ms=now_ms,
            updated_ms=now_ms,
        )
        seq: list[int] = []

        def decide(engine: LedgerEngine) -> list[Entry]:
            e = engine.withdraw(site_id, int(self.now()), t.gross_minor, t.transfer_id)
            seq.append(e.seq)
            return [e]

        async def also(conn: AsyncConnection) -> None:
            await self.store.insert_in(conn, replace(t, ledger_seq=seq[0]))

        try:
            await self.ledger.append(decide, also)
        except LedgerRuleError as exc:  # the ledger's own overdraft rule (a race with a bid)
            raise CreditConflict(f"the ledger refused the withdrawal: {exc}") from None
        return await self._pay_out(t.transfer_id)

    async def _pay_out(self, transfer_id: str) -> CreditTransfer:
        t = await self.store.get(transfer_id)
        assert t is not None
        if t.state != "paying_out":
            return t
        try:
            payout_id = await self._port().payout(
                t.transfer_id,
                Money(t.net_minor, t.currency),
                t.payout_to,
                f"Market credits of {t.site_id} redeemed (transfer {t.transfer_id})",
            )
        except PaymentError as exc:
            await self._give_back(t, str(exc))
            raise CreditConflict(f"the payout was refused ({exc}); the credits are back") from None
        await self.store.move(
            t.transfer_id, ["paying_out"], "paid_out", self._now_ms(), payout_id=payout_id
        )
        got = await self.store.get(t.transfer_id)
        assert got is not None
        return got

    async def _give_back(self, t: CreditTransfer, reason: str) -> None:
        await self._deposit_and_move(
            t, t.gross_minor, "paying_out", "returned", "return_seq", detail=reason
        )

    async def _deposit_and_move(
        self,
        t: CreditTransfer,
        amount_minor: int,
        from_state: str,
        to_state: str,
        seq_column: str,
        **values: object,
    ) -> None:
        """In one unit of work: a DEPOSIT of `amount_minor` naming the transfer, and the
        transfer moved from `from_state` to `to_state` with the entry's seq in `seq_column`.
        If the transfer had already left `from_state` (a repeated or racing call), nothing is
        written."""
        seq: list[int] = []

        def decide(engine: LedgerEngine) -> list[Entry]:
            e = engine.deposit(t.site_id, int(self.now()), amount_minor, ref=t.transfer_id)
            seq.append(e.seq)
            return [e]

        async def also(conn: AsyncConnection) -> None:
            moved = await self.store.move_in(
                conn,
                t.transfer_id,
                [from_state],
                to_state,
                self._now_ms(),
                **{seq_column: seq[0]},
                **values,
            )
            if not moved:
                raise _AlreadyMoved

        try:
            await self.ledger.append(decide, also)
        except _AlreadyMoved:
            return

    async def retry_payouts(self) -> int:
        """Pay out redemptions whose payout was not confirmed (the process stopped between the
        withdrawal and the provider's answer): the provider's idempotency pays each once."""
        done = 0
        for t in await self.store.in_state(REDEMPTION, "paying_out"):
            with contextlib.suppress(CreditConflict):  # refused: given back
                await self._pay_out(t.transfer_id)
            done += 1
        return done
