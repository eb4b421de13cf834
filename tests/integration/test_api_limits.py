"""The HTTP API's input limits (cloud.api.limits): a client over its request rate gets 429 with
Retry-After and a JSON error, keyed by its credential (else its address), while other clients
go on; a body over the limit gets 413; both are counted in /metrics. Over a real server, one
client hammering from its own process does not slow another client's requests much (a generous
ratio against a baseline measured in the same test: fairness, not a benchmark)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from cloud.api.app import create_app
from cloud.domain.rate_limit import BucketLimit
from cloud.storage.accounts import AccountStore
from cloud.storage.store import Store
from tests.helpers.aggregator import aggregator_runtime

ADMIN = "limits-admin-token-0123456789"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.connect(f"sqlite:///{tmp_path / 'cloud.sqlite'}")
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


async def _operator_token(store: Store, email: str) -> str:
    accounts = AccountStore(store.engine)
    a = await accounts.create_account(email, "op", "a long password", "grid_operator", "approved")
    return await accounts.issue_token(a.account_id, 3600)


async def test_over_the_rate_a_client_gets_429_and_others_go_on(sqlite_store: Store) -> None:
    other = await _operator_token(sqlite_store, "other@example.org")
    app = create_app(
        sqlite_store, admin_token=ADMIN, http_rate=BucketLimit(1.0, 5), max_body_bytes=1000
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        codes = [(await c.get("/api/v1/devices", headers=admin)).status_code for _ in range(7)]
        assert codes == [200] * 5 + [429] * 2
        r = await c.get("/api/v1/devices", headers=admin)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert r.json() == {"detail": r.json()["detail"]} and "too many" in r.json()["detail"]
        # Another principal, from the same address, is not held back by the first one.
        r = await c.get("/api/v1/devices", headers={"Authorization": f"Bearer {other}"})
        assert r.status_code == 200
        # Liveness probes are not limited.
        assert [(await c.get("/healthz")).status_code for _ in range(10)] == [200] * 10
        # Made-up tokens get 401 and drain their address: then 429, whatever token comes next.
        bogus = [
            (await c.get("/api/v1/devices", headers={"Authorization": f"Bearer x{i}"})).status_code
            for i in range(8)
        ]
        assert bogus[:5] == [401] * 5 and bogus[-1] == 429
        assert (await c.get("/api/v1/devices")).status_code == 429  # anonymous: the address
        ctx = app.state.ctx
        assert ctx.http_limits.rate_limited == 2 + 1 + bogus.count(429) + 1


async def test_a_body_over_the_limit_gets_413(sqlite_store: Store) -> None:
    app = create_app(sqlite_store, admin_token=ADMIN, max_body_bytes=1000)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        r = await c.post("/api/v1/market/orders", headers=admin, content=b"{" + b" " * 2000)
        assert r.status_code == 413
        assert "1000 bytes" in r.json()["detail"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for _ in range(5):
                yield b" " * 400

        r = await c.post("/api/v1/market/orders", headers=admin, content=chunks())
        assert r.status_code == 413
        r = await c.post("/api/v1/market/orders", headers=admin, content=b"{}")
        assert r.status_code != 413  # a small body reaches the route
        assert app.state.ctx.http_limits.too_large == 2
        metrics = (await c.get("/metrics", headers=admin)).text
        assert 'gridmint_http_rejected_total{reason="too_large"} 2' in metrics
        assert "gridmint_ingest_rate_limited_total 0" in metrics


def _p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


@pytest.mark.slow
async def test_a_hammering_client_gets_429s_and_does_not_slow_another(tmp_path: Path) -> None:
    runtime = aggregator_runtime(
        f"sqlite:///{tmp_path / 'cloud.sqlite'}",
        "mqtt://127.0.0.1:1",  # no broker needed: HTTP only
        "gridmint-test",
        admin_token=ADMIN,
        http_rate_per_s=20.0,
        http_burst=20,
        market_enabled=False,
    )
    await runtime.start(connect_mqtt=False)
    assert runtime.store is not None
    try:
        token = await _operator_token(runtime.store, "calm@example.org")
        async with httpx.AsyncClient(
            base_url=runtime.url, headers={"Authorization": f"Bearer {token}"}
        ) as calm:

            async def requests(n: int) -> list[float]:
                took = []
                for _ in range(n):
                    t0 = time.monotonic()
                    r = await calm.get("/api/v1/devices")
                    took.append(time.monotonic() - t0)
                    assert r.status_code == 200, r.text
                    await asyncio.sleep(0.1)  # 10 requests/s: under its limit
                return took

            baseline = await requests(15)
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.helpers.hammer",
                runtime.url,
                "/api/v1/devices",
                ADMIN,
                "2",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=ROOT,
            )
            assert proc.stdin is not None and proc.stdout is not None
            try:
                assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"hammering"
                under = await requests(15)
                proc.stdin.write(b"stop\n")
                await proc.stdin.drain()
                report = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
            finally:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
        status = {int(k): v for k, v in report["status"].items()}
        base, hammered = _p95(baseline), _p95(under)
        print(
            f"\nhammer: {status}; calm p95 {base * 1000:.0f} ms without, "
            f"{hammered * 1000:.0f} ms under it"
        )
        assert status.get(429, 0) > status.get(200, 0)
        assert set(status) <= {200, 429}
        assert report["retry_after"] and all(int(v) >= 1 for v in report["retry_after"])
        assert hammered <= 5 * base + 0.25, (base, hammered)
    finally:
        await runtime.stop()
