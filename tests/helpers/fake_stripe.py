"""An in-repo fake of the few Stripe endpoints the adapter calls, served over real HTTP.

`POST /v1/payment_intents`, `POST /v1/refunds` and `POST /v1/transfers` answer like Stripe
(form-encoded bodies, bearer secret key, Idempotency-Key replays). Test-only
`POST /_test/succeed/{pi}` and `/_test/fail/{pi}` make the fake send the matching webhook to
`webhook_url`, signed with the stripe package's own `WebhookSignature.generate_signature_header`,
`times` times (the same event: a redelivery); they answer the status codes the receiver gave. A
refund sends charge.refunded the same way once its answer is out.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import stripe
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from cloud.runtime import free_port, http_config


class FakeStripe:
    def __init__(self, secret_key: str, webhook_secret: str) -> None:
        self.secret_key = secret_key
        self.webhook_secret = webhook_secret
        self.webhook_url = ""
        self.intents: dict[str, dict[str, Any]] = {}
        self.refunds: list[dict[str, Any]] = []
        self.transfers: list[dict[str, Any]] = []
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.sent: list[tuple[dict[str, Any], int]] = []  # (event, receiver's status)
        self._idempotent: dict[str, dict[str, Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.base_url = ""
        self.app = self._make_app()

    def _check(self, request: Request) -> None:
        if request.headers.get("authorization") != f"Bearer {self.secret_key}":
            raise HTTPException(401, {"message": "Invalid API Key provided"})

    def _make_app(self) -> FastAPI:
        app = FastAPI()

        @app.exception_handler(HTTPException)
        async def _stripe_error(_r: Request, exc: HTTPException) -> JSONResponse:
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

        @app.post("/v1/payment_intents")
        async def create_intent(request: Request) -> dict[str, Any]:
            self._check(request)
            form = {k: str(v) for k, v in (await request.form()).items()}
            self.requests.append(("payment_intents", form, dict(request.headers)))
            key = request.headers.get("idempotency-key")
            if key and key in self._idempotent:
                return self._idempotent[key]
            if not form.get("amount", "").isdigit() or len(form.get("currency", "")) != 3:
                raise HTTPException(400, {"message": "amount and currency are required"})
            pi = "pi_" + secrets.token_hex(8)
            intent = {
                "id": pi,
                "object": "payment_intent",
                "amount": int(form["amount"]),
                "currency": form["currency"],
                "status": "requires_payment_method",
                "client_secret": f"{pi}_secret_{secrets.token_hex(8)}",
                "metadata": {"ref": form.get("metadata[ref]", "")},
            }
            self.intents[pi] = intent
            if key:
                self._idempotent[key] = intent
            return intent

        @app.post("/v1/refunds")
        async def refund(request: Request) -> dict[str, Any]:
            self._check(request)
            form = {k: str(v) for k, v in (await request.form()).items()}
            self.requests.append(("refunds", form, dict(request.headers)))
            intent = self.intents.get(form.get("payment_intent", ""))
            if intent is None or intent["status"] != "succeeded":
                raise HTTPException(400, {"message": "No such payment_intent"})
            # Without an amount Stripe refunds what is left of the charge.
            left = intent["amount"] - intent.get("amount_refunded", 0)
            amount = int(form.get("amount", left))
            if not 0 < amount <= left:
                raise HTTPException(400, {"message": "Refund amount is greater than unrefunded"})
            re = {
                "id": "re_" + secrets.token_hex(8),
                "object": "refund",
                "amount": amount,
                "payment_intent": intent["id"],
                "status": "succeeded",
            }
            self.refunds.append(re)
            intent["amount_refunded"] = intent.get("amount_refunded", 0) + amount
            charge = {
                "id": "ch_" + intent["id"][3:],
                "object": "charge",
                "payment_intent": intent["id"],
                "amount": intent["amount"],
                "amount_refunded": intent["amount_refunded"],
            }
            # Stripe sends the webhook after the API call has answered.
            task = asyncio.create_task(self._later(self.event("charge.refunded", charge)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return re

        @app.post("/v1/transfers")
        async def transfer(request: Request) -> dict[str, Any]:
            # Connect transfers (market-credit redemptions): idempotent per key, like Stripe.
            self._check(request)
            form = {k: str(v) for k, v in (await request.form()).items()}
            self.requests.append(("transfers", form, dict(request.headers)))
            key = request.headers.get("idempotency-key", "")
            if key and key in self._idempotent:
                return self._idempotent[key]
            if not form.get("destination", "").startswith("acct_"):
                raise HTTPException(400, {"message": "No such destination"})
            tr = {
                "id": "tr_" + secrets.token_hex(8),
                "object": "transfer",
                "amount": int(form["amount"]),
                "currency": form["currency"],
                "destination": form["destination"],
                "transfer_group": form.get("transfer_group"),
            }
            self.transfers.append(tr)
            if key:
                self._idempotent[key] = tr
            return tr

        @app.post("/_test/succeed/{pi}")
        async def succeed(pi: str, times: int = 1) -> list[int]:
            return await self._finish(pi, "succeeded", times)

        @app.post("/_test/fail/{pi}")
        async def fail(pi: str, times: int = 1) -> list[int]:
            return await self._finish(pi, "failed", times)

        return app

    async def _later(self, event: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        await self.deliver(event)

    async def _finish(self, pi: str, how: str, times: int) -> list[int]:
        intent = self.intents.get(pi)
        if intent is None:
            raise HTTPException(404, {"message": "No such payment_intent"})
        if how == "succeeded":
            intent["status"] = "succeeded"
            event = self.event("payment_intent.succeeded", dict(intent))
        else:
            intent["status"] = "requires_payment_method"
            obj = dict(intent, last_payment_error={"message": "Your card was declined."})
            event = self.event("payment_intent.payment_failed", obj)
        return [await self.deliver(event) for _ in range(times)]

    def event(self, type_: str, obj: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "evt_" + secrets.token_hex(8),
            "object": "event",
            "type": type_,
            "created": int(time.time()),
            "data": {"object": obj},
        }

    def sign(self, payload: str, timestamp: int | None = None, secret: str | None = None) -> str:
        return stripe.WebhookSignature.generate_signature_header(
            payload, secret or self.webhook_secret, timestamp=timestamp
        )

    async def deliver(self, event: dict[str, Any]) -> int:
        """POST the event, signed, to the webhook URL; the receiver's status code."""
        payload = json.dumps(event)
        async with httpx.AsyncClient() as client:
            r = await client.post(
                self.webhook_url,
                content=payload.encode(),
                headers={
                    "Stripe-Signature": self.sign(payload),
                    "Content-Type": "application/json",
                },
            )
        self.sent.append((event, r.status_code))
        return r.status_code


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(http_config(app, "127.0.0.1", port))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                await task
                raise RuntimeError("the server did not start")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@asynccontextmanager
async def fake_stripe(secret_key: str, webhook_secret: str) -> AsyncIterator[FakeStripe]:
    fake = FakeStripe(secret_key, webhook_secret)
    async with serve(fake.app) as url:
        fake.base_url = url
        yield fake
