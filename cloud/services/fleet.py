"""The operator's live fleet: telemetry and status in, device state, group totals and alarms out.

Owns: feeding MQTT telemetry (protocol/telemetry.py, CBOR, QoS 0) and retained status messages
into the in-memory `FleetState`, refusing (and counting) what does not parse or names the wrong
device, loading the registry's devices and site coordinates, and raising and clearing alarms:

* offline: the last will said so, or nothing arrived for `stale_ms`;
* clock_unsynchronised / fault: from the device's health flags;
* rejected_tokens / tamper: from ingest's stored rejections (tamper: a broken chain or two
  records for one slot, i.e. equivocation);
* failed_command: raised by the dispatch service for a FAILED (251) acknowledgement.

Live state is not stored: after a restart the retained status messages and the next samples
rebuild it within a telemetry period. Alarms are stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cloud.domain.fleet_state import DeviceLive, FleetState
from cloud.storage.dispatch_store import DispatchStore
from protocol import telemetry, topics
from protocol.reasons import RejectReason

log = logging.getLogger(__name__)

# Telemetry samples handled between two turns of the event loop: ~256 x 50-100 us keeps an
# API request waiting behind a batch of 2048 to a few ms.
YIELD_EVERY = 256
TAMPER_REASONS = frozenset(
    {RejectReason.CHAIN_BROKEN.value, RejectReason.EQUIVOCATION.value, RejectReason.REPLAYED.value}
)
# Retryable refusals (a gap, our own storage error, the rate limit) are not the device's fault.
NOT_ALARMING = frozenset(
    {
        RejectReason.SEQUENCE_GAP.value,
        RejectReason.STORAGE_ERROR.value,
        RejectReason.RATE_LIMITED.value,
    }
)


@dataclass(slots=True)
class FleetCounters:
    """Since the process started."""

    telemetry: int = 0
    status: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # reason -> messages
    alarms_raised: Counter[str] = field(default_factory=Counter)  # kind -> alarms


class FleetService:
    """Live fleet state and alarms."""

    def __init__(
        self,
        store: DispatchStore,
        now: Callable[[], float] = time.time,
        *,
        battery_wh: int = 10_000,
        battery_max_w: int = 5_000,
        stale_ms: int = 60_000,
    ) -> None:
        self.store = store
        self.now = now
        self.state = FleetState()
        self.counters = FleetCounters()
        self.battery_wh = battery_wh
        self.battery_max_w = battery_max_w
        self.stale_ms = stale_ms
        self._rejections_seen = 0
        self._pending: list[tuple[str, str, str, str, bool]] = []  # kind, device, site, detail, up

    def _ms(self) -> int:
        return int(self.now() * 1000)

    async def load(self) -> int:
        """Register every approved device (again: picks up new ones); returns how many."""
        n = 0
        for f in await self.store.fleet_facts():
            if f.status != "approved":
                continue
            self.state.register(
                f.device_id,
                f.site_id,
                f.zone,
                f.capacity_w,
                self.battery_wh,
                self.battery_max_w,
                f.latitude,
                f.longitude,
                now_ms=self._ms(),
                feeder=f.feeder,
            )
            n += 1
        if not self._rejections_seen:
            self._rejections_seen = await self.store.last_rejection_id()
        return n

    def _note(self, d: DeviceLive, before: str) -> None:
        """Queue alarm transitions implied by a state change (stored by `flush_alarms`)."""
        after = d.state
        if after == before:
            return
        for kind in ("offline", "fault", "clock_unsynchronised"):
            if after == kind:
                self._pending.append((kind, d.device_id, d.site_id, f"device is {kind}", True))
            elif before == kind:
                self._pending.append((kind, d.device_id, d.site_id, "", False))

    async def handle_telemetry(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """A batch of telemetry messages (QoS 0: nothing to acknowledge)."""
        now_ms = self._ms()
        for i, (topic, payload) in enumerate(messages):
            if i and not i % YIELD_EVERY:
                await asyncio.sleep(0)  # let HTTP requests in between (a batch is 2048)
            self.counters.telemetry += 1
            try:
                device_id = topics.parse(topic).device_id
                t = telemetry.decode(payload)
            except (topics.TopicError, telemetry.TelemetryFormatError) as exc:
                self.counters.refused["malformed"] += 1
                log.debug("telemetry on %s refused: %s", topic, exc)
                continue
            if t.device_id != device_id:
                self.counters.refused["topic_mismatch"] += 1
                continue
            d = self.state.devices.get(device_id)
            if d is None:
                self.counters.refused["unknown_device"] += 1
                continue
            before = d.state
            self.state.on_telemetry(t, now_ms)
            self._note(d, before)
        await self.flush_alarms()

    async def handle_status(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Retained status messages: the agent's JSON, or the broker's last will."""
        now_ms = self._ms()
        for topic, payload in messages:
            self.counters.status += 1
            try:
                device_id = topics.parse(topic).device_id
                doc = json.loads(payload)
                state = str(doc["state"])
                waiting = int(doc.get("waiting", 0))
            except (topics.TopicError, ValueError, KeyError, TypeError) as exc:
                self.counters.refused["malformed_status"] += 1
                log.debug("status on %s refused: %s", topic, exc)
                continue
            d = self.state.devices.get(device_id)
            if d is None:
                self.counters.refused["unknown_device"] += 1
                continue
            before = d.state
            self.state.on_status(device_id, state, waiting, now_ms)
            self._note(d, before)
        await self.flush_alarms()

    async def check(self) -> None:
        """Periodic: devices gone silent, new token rejections, registry changes."""
        now_ms = self._ms()
        befores = {d.device_id: d.state for d in self.state.devices.values() if d.connected}
        for d in self.state.expire(now_ms, self.stale_ms):
            self._note(d, befores[d.device_id])
        for _id, device_id, reason, detail in await self.store.rejections_after(
            self._rejections_seen
        ):
            self._rejections_seen = _id
            if reason in NOT_ALARMING:
                continue
            kind = "tamper" if reason in TAMPER_REASONS else "rejected_tokens"
            known = self.state.devices.get(device_id)
            site = known.site_id if known is not None else ""
            self._pending.append((kind, device_id, site, f"{reason}: {detail}", True))
        await self.flush_alarms()

    def raise_alarm(self, kind: str, device_id: str, detail: str) -> None:
        """Queue an alarm raised elsewhere (the dispatch service's failed commands)."""
        d = self.state.devices.get(device_id)
        self._pending.append((kind, device_id, d.site_id if d else "", detail, True))

    async def flush_alarms(self) -> None:
        """Store queued alarm transitions (a failure keeps them queued for the next round)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        try:
            # One transaction for the whole queue (a fleet coming online is 10,000 clears).
            raised = await self.store.apply_alarms(pending, self._ms())
        except Exception as exc:
            self._pending = pending + self._pending
            log.error("alarms: storing failed (kept for the next round): %s", exc)
            return
        self.counters.alarms_raised.update(raised)
