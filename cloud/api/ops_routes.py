"""Operating the aggregator: liveness (/healthz, public) and Prometheus metrics (grid operators).

Owns: those routes.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from collections import Counter

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from cloud.api.deps import ApiContext, CtxDep, require
from cloud.api.fleet_views import ledger_status
from cloud.api.schemas import Health
from cloud.auth import Role

router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["ops"])
async def healthz(ctx: CtxDep) -> Health:
    """Liveness plus database and broker state (one cheap query: probes run often)."""
    try:
        await ctx.store.ping()
        db = "ok"
    except Exception as exc:  # report, don't crash
        db = f"error: {exc}"
    return Health(
        status="ok" if db == "ok" else "degraded",
        database=db,
        broker="connected" if ctx.broker_connected() else "disconnected",
        sequencer=ctx.ledger is not None and ctx.ledger.writable,
    )


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    tags=["ops"],
    dependencies=[Depends(require(Role.GRID_OPERATOR, action="scrape metrics"))],
)
async def metrics(ctx: CtxDep) -> PlainTextResponse:
    """Prometheus text exposition of the ingest counters (from the database)."""
    s = await ctx.store.stats(intervals=1)
    lines = [
        "# HELP gridmint_ingest_storage_errors_total Messages left unacknowledged for "
        "redelivery because storage failed (since the process started).",
        "# TYPE gridmint_ingest_storage_errors_total counter",
        f"gridmint_ingest_storage_errors_total {ctx.storage_errors()}",
        "# HELP gridmint_ingest_rate_limited_total Token messages refused unread because "
        "their device was over its rate limit (retryable; nothing stored; since start).",
        "# TYPE gridmint_ingest_rate_limited_total counter",
        f"gridmint_ingest_rate_limited_total {ctx.ingest_rate_limited()}",
        "# HELP gridmint_http_rejected_total HTTP requests refused by the input limits "
        "(rate_limited: 429, too_large: 413; since start).",
        "# TYPE gridmint_http_rejected_total counter",
        f'gridmint_http_rejected_total{{reason="rate_limited"}} {ctx.http_limits.rate_limited}',
        f'gridmint_http_rejected_total{{reason="too_large"}} {ctx.http_limits.too_large}',
        "# HELP gridmint_tokens_accepted_total Generation tokens accepted and stored.",
        "# TYPE gridmint_tokens_accepted_total counter",
        f"gridmint_tokens_accepted_total {s.accepted}",
        "# HELP gridmint_tokens_rejected_total Messages refused, by reason.",
        "# TYPE gridmint_tokens_rejected_total counter",
        *(
            f'gridmint_tokens_rejected_total{{reason="{r}"}} {n}'
            for r, n in sorted(s.rejected_by_reason.items())
        ),
        "# HELP gridmint_generated_wh_total Generation in accepted tokens, Wh.",
        "# TYPE gridmint_generated_wh_total counter",
        f"gridmint_generated_wh_total {s.generated_wh}",
        "# HELP gridmint_broker_connected 1 while the aggregator is connected to the broker.",
        "# TYPE gridmint_broker_connected gauge",
        f"gridmint_broker_connected {int(ctx.broker_connected())}",
    ]
    ledger = ctx.ledger
    led = await ledger_status(ledger)
    if led is not None and ledger is not None:
        lines += [
            "# HELP gridmint_ledger_sequencer 1 in the process that writes the ledger, 0 in "
            "a standby.",
            "# TYPE gridmint_ledger_sequencer gauge",
            f"gridmint_ledger_sequencer {int(ledger.writable)}",
            "# HELP gridmint_ledger_entries Entries in the ledger's Merkle log.",
            "# TYPE gridmint_ledger_entries gauge",
            f"gridmint_ledger_entries {led['entries']}",
            "# HELP gridmint_ledger_checkpoint_size Size of the newest signed checkpoint.",
            "# TYPE gridmint_ledger_checkpoint_size gauge",
            f"gridmint_ledger_checkpoint_size {led['checkpoint']}",
            "# HELP gridmint_ledger_intervals_closed Site intervals closed into the ledger.",
            "# TYPE gridmint_ledger_intervals_closed gauge",
            f"gridmint_ledger_intervals_closed {led['intervals']}",
            "# HELP gridmint_ledger_late_records Records that arrived after their interval "
            "closed (stored, not minted).",
            "# TYPE gridmint_ledger_late_records gauge",
            f"gridmint_ledger_late_records {await ledger.store.late_records()}",
        ]
    lines += await derms_metrics(ctx)
    lines += await payment_metrics(ctx)
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


async def payment_metrics(ctx: ApiContext) -> list[str]:
    """Payments by status, and the provider events refused or not applied, by outcome (bad
    signatures, duplicates, unknown payments, late successes refunded, ignored types)."""
    if ctx.payments is None:
        return []
    by_status = await ctx.payments.store.count_by_status()
    return [
        "# HELP gridmint_payments Payments through the payment port, by status.",
        "# TYPE gridmint_payments gauge",
        *(
            f'gridmint_payments{{status="{st}"}} {by_status.get(st, 0)}'
            for st in ("created", "processing", "succeeded", "failed", "canceled", "refunded")
        ),
        "# HELP gridmint_payment_events_total Provider events and webhooks not applied as a "
        "status change, by outcome (since start).",
        "# TYPE gridmint_payment_events_total counter",
        *(
            f'gridmint_payment_events_total{{outcome="{k}"}} {n}'
            for k, n in sorted(ctx.payments.counters.items())
        ),
    ]


async def derms_metrics(ctx: ApiContext) -> list[str]:
    """The fleet's devices by state, alarms, dispatch events, commands and responses."""
    fleet, dispatch = ctx.fleet, ctx.dispatch
    if fleet is None or dispatch is None:
        return []
    states = Counter(d.state for d in fleet.state.devices.values())
    open_alarms = Counter(a.kind for a in await fleet.store.alarms(open_only=True, limit=100_000))
    c = dispatch.counters
    lat = sorted(c.ack_latency_ms)
    out = [
        "# HELP gridmint_fleet_devices Registered devices by live state.",
        "# TYPE gridmint_fleet_devices gauge",
        *(
            f'gridmint_fleet_devices{{state="{st}"}} {states.get(st, 0)}'
            for st in ("online", "offline", "buffering", "fault", "clock_unsynchronised")
        ),
        "# HELP gridmint_fleet_telemetry_total Telemetry messages received (since start).",
        "# TYPE gridmint_fleet_telemetry_total counter",
        f"gridmint_fleet_telemetry_total {fleet.counters.telemetry}",
        "# HELP gridmint_fleet_refused_total Telemetry/status messages refused, by reason.",
        "# TYPE gridmint_fleet_refused_total counter",
        *(
            f'gridmint_fleet_refused_total{{reason="{r}"}} {n}'
            for r, n in sorted(fleet.counters.refused.items())
        ),
        "# HELP gridmint_alarms_open Alarms not yet cleared and acknowledged, by kind.",
        "# TYPE gridmint_alarms_open gauge",
        *(f'gridmint_alarms_open{{kind="{k}"}} {n}' for k, n in sorted(open_alarms.items())),
        "# HELP gridmint_alarms_raised_total Alarms raised by kind (since start).",
        "# TYPE gridmint_alarms_raised_total counter",
        *(
            f'gridmint_alarms_raised_total{{kind="{k}"}} {n}'
            for k, n in sorted(fleet.counters.alarms_raised.items())
        ),
        "# HELP gridmint_dispatch_events_total Dispatch events created (since start).",
        "# TYPE gridmint_dispatch_events_total counter",
        f"gridmint_dispatch_events_total {c.events}",
        "# HELP gridmint_dispatch_commands_sent_total Signed commands published (since start).",
        "# TYPE gridmint_dispatch_commands_sent_total counter",
        f"gridmint_dispatch_commands_sent_total {c.commands_sent}",
        "# HELP gridmint_dispatch_responses_total Verified device responses, by status.",
        "# TYPE gridmint_dispatch_responses_total counter",
        *(
            f'gridmint_dispatch_responses_total{{status="{k}"}} {n}'
            for k, n in sorted(c.responses.items())
        ),
        "# HELP gridmint_dispatch_acks_refused_total Acknowledgements refused (bad signature, "
        "unknown device, malformed).",
        "# TYPE gridmint_dispatch_acks_refused_total counter",
        f"gridmint_dispatch_acks_refused_total {c.acks_refused}",
    ]
    if lat:
        out += [
            "# HELP gridmint_dispatch_ack_latency_ms First response after a command was sent, "
            "over the last 10,000 commands.",
            "# TYPE gridmint_dispatch_ack_latency_ms summary",
            f'gridmint_dispatch_ack_latency_ms{{quantile="0.5"}} {lat[len(lat) // 2]}',
            f'gridmint_dispatch_ack_latency_ms{{quantile="0.99"}} {lat[len(lat) * 99 // 100]}',
            f"gridmint_dispatch_ack_latency_ms_count {len(lat)}",
        ]
    return out
