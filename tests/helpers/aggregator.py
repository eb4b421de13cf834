"""An aggregator runtime for a test: its own MQTT client id, the HTTP port left to the caller."""

from __future__ import annotations

import time
from typing import Any

from cloud.runtime import CloudRuntime
from cloud.settings import CloudSettings
from protocol.clock import Clock


def aggregator_runtime(
    database_url: str,
    broker_url: str,
    deployment: str,
    clock: Clock | None = None,
    client_id: str | None = None,
    **settings: Any,
) -> CloudRuntime:
    """`CloudRuntime` on this database and broker; `settings` are further CloudSettings fields.

    The client id is new each time: a persistent session left by another test on the same
    broker must not deliver its messages here. A test that restarts the aggregator passes the
    first one's `client_id` so that the new process takes over its session (as a restarted
    `gridmint cloud serve` with the same settings does)."""
    return CloudRuntime(
        CloudSettings(
            database_url=database_url,
            broker_url=broker_url,
            deployment=deployment,
            http_port=0,
            client_id=client_id or f"agg-{time.monotonic_ns()}",
            **settings,
        ),
        clock,
    )
