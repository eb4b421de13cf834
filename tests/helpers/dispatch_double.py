"""An in-memory stand-in for cloud.services.dispatch.DispatchService (the DispatchEvents protocol
of cloud/services/openadr.py), for testing the OpenADR VTN before and apart from the real one.

It applies the real request checks (cloud.domain.dispatch_events.check_request) and keeps every
request it was given, so a test sees exactly what the VTN asked for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from cloud.domain.dispatch_events import (
    EventPerformance,
    EventRequest,
    EventView,
    SitePerformance,
    check_request,
    event_status,
)


@dataclass
class _Event:
    view: EventView
    cancelled: bool = False
    history: list[EventRequest] = field(default_factory=list)


class DispatchDouble:
    """create/modify/cancel/get/performance as the lead's DispatchService does them."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.events: dict[str, _Event] = {}
        self.sites: list[SitePerformance] = [
            SitePerformance("site-a", 2000, 1800, 100, 640),
            SitePerformance("site-b", 500, 450, 0, None),
        ]

    def _view(self, e: _Event) -> EventView:
        req = e.view.request
        now = int(self._clock())
        status = event_status(req.start, req.start + req.duration_s, e.cancelled, now)
        return replace(e.view, status=status)

    async def create_event(self, req: EventRequest, *, by: str) -> EventView:
        check_request(req, int(self._clock()))
        event_id = f"d{len(self.events) + 1}"
        view = EventView(event_id, 0, "scheduled", req, 2, {}, int(self._clock() * 1000), by)
        self.events[event_id] = _Event(view, history=[req])
        return self._view(self.events[event_id])

    async def modify_event(self, event_id: str, req: EventRequest, *, by: str) -> EventView:
        e = self.events.get(event_id)
        if e is None:
            raise ValueError(f"no event {event_id}")
        if e.cancelled:
            raise ValueError(f"event {event_id} is cancelled")
        check_request(req, int(self._clock()))
        e.view = replace(e.view, modification=e.view.modification + 1, request=req)
        e.history.append(req)
        return self._view(e)

    async def cancel_event(self, event_id: str, *, by: str) -> EventView:
        e = self.events.get(event_id)
        if e is None:
            raise ValueError(f"no event {event_id}")
        e.cancelled = True
        e.view = replace(e.view, modification=e.view.modification + 1)
        return self._view(e)

    async def get_event(self, event_id: str) -> EventView | None:
        e = self.events.get(event_id)
        return None if e is None else self._view(e)

    async def performance(self, event_id: str) -> EventPerformance | None:
        e = self.events.get(event_id)
        if e is None:
            return None
        start = e.view.request.start
        return EventPerformance(
            event_id,
            sum(s.requested_w for s in self.sites),
            sum(s.delivered_w for s in self.sites),
            sum(s.baseline_w for s in self.sites),
            list(self.sites),
            [(start, 2500, 0), (start + 60, 2500, 2250)],
        )
