"""HTTP input limits: a request rate per client and a body size, as one ASGI middleware.

Owns: who a client is for the rate limit (the credential it presents, else its address), the
429 and 413 answers (plain JSON: `{"detail": ...}`, with `Retry-After` on 429) and their counts
for /metrics. The bucket rule is cloud.domain.rate_limit's, the same as ingest's per device.

A client is keyed by the SHA-256 of its bearer token or session cookie when it sends one (one
principal, from however many addresses), else by its address. Checking the credential is the
routes' business; a credential that turns out wrong (401) also costs its address a request, so
a client cycling made-up tokens is limited by its address.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.auth import SESSION_COOKIE
from cloud.domain.rate_limit import BucketLimit, RateLimiter

EXEMPT = frozenset({"/healthz"})  # liveness probes run often and cost one cheap query


@dataclass(slots=True)
class HttpLimitCounters:
    """Requests refused since start."""

    rate_limited: int = 0
    too_large: int = 0


class InputLimits:
    """ASGI middleware: 429 over the rate, 413 over the body size."""

    def __init__(
        self,
        app: ASGIApp,
        rate: BucketLimit,
        max_body_bytes: int,
        counters: HttpLimitCounters,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.limiter = RateLimiter(rate)
        self.max_body_bytes = max_body_bytes
        self.counters = counters
        self.monotonic = monotonic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        address = f"addr:{scope['client'][0] if scope.get('client') else '?'}"
        key = _credential_key(headers) or address
        now = self.monotonic()
        wait_s = self.limiter.wait_s(address, now) if key != address else 0.0
        if not wait_s:
            wait_s = self.limiter.take(key, now)
        if wait_s:
            self.counters.rate_limited += 1
            await _answer(
                send,
                429,
                "too many requests: slow down and retry after the Retry-After seconds",
                [(b"retry-after", str(max(1, math.ceil(wait_s))).encode())],
            )
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            self.counters.too_large += 1
            await _answer(send, 413, f"request body over {self.max_body_bytes} bytes")
            return
        received = 0
        over = False  # the body passed the limit: whatever the route answers becomes a 413
        replaced = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # As if the client had gone: reading the body fails, so the route never
                    # runs on part of it.
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def watched_send(message: Message) -> None:
            nonlocal replaced, started
            if replaced:
                return
            if message["type"] == "http.response.start":
                started = True
                if over:
                    replaced = True
                    self.counters.too_large += 1
                    await _answer(send, 413, f"request body over {self.max_body_bytes} bytes")
                    return
                if message["status"] == 401 and key != address:
                    self.limiter.take(address, self.monotonic())
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except Exception:
            if not over:
                raise
        if over and not started:  # the app answered nothing (it saw the client go)
            self.counters.too_large += 1
            await _answer(send, 413, f"request body over {self.max_body_bytes} bytes")


def _credential_key(headers: dict[str, bytes]) -> str | None:
    auth = headers.get("authorization", b"")
    if auth[:7].lower() == b"bearer " and auth[7:].strip():
        return "cred:" + hashlib.sha256(auth[7:].strip()).hexdigest()[:32]
    for part in headers.get("cookie", b"").split(b";"):
        name, _, value = part.strip().partition(b"=")
        if name.decode("latin-1") == SESSION_COOKIE and value:
            return "cred:" + hashlib.sha256(value).hexdigest()[:32]
    return None


async def _answer(
    send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
