"""gridmint's OpenADR 3.0.1 VTN: programs, events that become dispatch events, and reports.

Version: OpenADR **3.0.1** (openadr3.yaml of grid-coordination/openadr3-specification, tag
3.0.1), the version openadr3-client's BL client speaks over plain HTTP as well as HTTPS. Routes
live in cloud/api/openadr_routes.py under `/openadr3/3.0.1`; docs/openadr.md has the table.

Owns: the VTN's rules. A program names a gridmint group with a `GROUP` target; an event of the
program becomes one dispatch event (cloud.domain.openadr.event_request says how), a PUT modifies
it, a DELETE cancels it. Reports: for every event that became a dispatch event, gridmint's own
report (clientName "gridmint") is made from the dispatch service's performance when reports are
read, so a reader always sees the latest; VENs may POST their own.

Access: OAuth2 client credentials; clients and scopes come from settings (`openadr_clients`).
Tokens are HMAC-signed with the client's secret (cloud.domain.openadr.issue_token), so every
aggregator process with the same settings accepts them.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from cloud.domain.dispatch_events import EventPerformance, EventRequest, EventView
from cloud.domain.openadr import (
    OpenAdrClient,
    OpenAdrError,
    bad,
    check_interval_period,
    check_token,
    event_request,
    event_times,
    format_datetime_ms,
    format_datetime_s,
    format_duration,
    group_of,
    issue_token,
    matches_targets,
)
from cloud.storage.openadr_store import NameTaken, OpenAdrStore, StoredObject, dump_body

TOKEN_LIFETIME_S = 3600
REPORT_CLIENT = "gridmint"
MAX_LIMIT = 50  # the spec's largest page
# gridmint's report on an event is made again on each read until this long after the event's
# end (the board samples a while after it), then once more, and then left as it is.
REPORT_SETTLE_S = 300


class DispatchEvents(Protocol):
    """What the VTN needs of cloud.services.dispatch.DispatchService."""

    async def create_event(self, req: EventRequest, *, by: str) -> EventView: ...

    async def modify_event(self, event_id: str, req: EventRequest, *, by: str) -> EventView: ...

    async def cancel_event(self, event_id: str, *, by: str) -> EventView: ...

    async def get_event(self, event_id: str) -> EventView | None: ...

    async def performance(self, event_id: str) -> EventPerformance | None: ...


def _page(items: list[dict[str, Any]], skip: int, limit: int) -> list[dict[str, Any]]:
    if skip < 0 or not 0 <= limit <= MAX_LIMIT:
        raise bad(f"skip must be >= 0 and limit 0..{MAX_LIMIT}")
    return items[skip : skip + limit]


def _kw(w: int) -> float:
    return w / 1000


class OpenAdrService:
    """The VTN over its store and the dispatch service (None: events answer 503)."""

    def __init__(
        self,
        store: OpenAdrStore,
        dispatch: DispatchEvents | None,
        clients: Mapping[str, OpenAdrClient],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.dispatch = dispatch
        self.clients = dict(clients)
        self._clock = clock

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- auth ----------------------------------------------------------------------------

    def token(
        self, client_id: str, client_secret: str, scope: str | None
    ) -> tuple[str, int, frozenset[str]]:
        """(access token, lifetime s, granted scopes) for good client credentials: the asked
        scopes the client has (all of its scopes when none are asked). ValueError otherwise."""
        client = self.clients.get(client_id)
        if client is None or not _same(client.secret, client_secret):
            raise ValueError("invalid_client")
        asked = frozenset((scope or "").split())
        granted = client.scopes & asked if asked else client.scopes
        expires = int(self._clock()) + TOKEN_LIFETIME_S
        return issue_token(client, granted, expires), TOKEN_LIFETIME_S, granted

    def authorize(self, bearer: str | None, scope: str) -> str:
        """The client id of a bearer token with `scope`; OpenAdrError 401 or 403 otherwise."""
        if not bearer:
            raise OpenAdrError(401, "an access token is needed: POST /auth/token first")
        got = check_token(bearer, self.clients, int(self._clock()))
        if got is None:
            raise OpenAdrError(401, "the access token is not valid or has expired")
        client_id, scopes = got
        if scope not in scopes:
            raise OpenAdrError(403, f"client {client_id} lacks the scope {scope}")
        return client_id

    # --- programs ------------------------------------------------------------------------

    def _program_json(self, p: StoredObject) -> dict[str, Any]:
        return {
            "id": p.object_id,
            "createdDateTime": format_datetime_ms(p.created_ms),
            "modificationDateTime": format_datetime_ms(p.modified_ms),
            "objectType": "PROGRAM",
            **p.body,
        }

    def _check_program(self, body: dict[str, Any]) -> None:
        check_interval_period(body.get("intervalPeriod"), "intervalPeriod")
        group_of(body.get("targets"))  # a GROUP target must name a group

    async def list_programs(
        self, *, target_type: str | None, target_values: list[str], skip: int, limit: int
    ) -> list[dict[str, Any]]:
        """Programs, filtered by target."""
        items = [
            self._program_json(p)
            for p in await self.store.list_programs()
            if matches_targets(p.body.get("targets"), target_type, target_values)
        ]
        return _page(items, skip, limit)

    async def get_program(self, program_id: str) -> dict[str, Any]:
        """One program; 404 when there is none."""
        return self._program_json(await self._program(program_id))

    async def _program(self, program_id: str) -> StoredObject:
        p = await self.store.get_program(program_id)
        if p is None:
            raise OpenAdrError(404, f"there is no program {program_id}")
        return p

    async def create_program(self, body: dict[str, Any]) -> dict[str, Any]:
        """Store a new program (its programName unique: 409 otherwise)."""
        self._check_program(body)
        program_id = uuid.uuid4().hex
        try:
            await self.store.insert_program(program_id, body, self._now_ms())
        except NameTaken:
            raise OpenAdrError(409, f"a program named {body['programName']!r} exists") from None
        return await self.get_program(program_id)

    async def update_program(self, program_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Replace a program. Its events' dispatch events keep the group they were made for."""
        self._check_program(body)
        await self._program(program_id)
        try:
            await self.store.update_program(program_id, body, self._now_ms())
        except NameTaken:
            raise OpenAdrError(409, f"a program named {body['programName']!r} exists") from None
        return await self.get_program(program_id)

    async def delete_program(self, program_id: str) -> dict[str, Any]:
        """Remove a program with no events left (409 otherwise); returns what was removed."""
        p = await self._program(program_id)
        if await self.store.count_events(program_id):
            raise OpenAdrError(409, f"program {program_id} still has events: delete them first")
        await self.store.delete_program(program_id)
        return self._program_json(p)

    # --- events --------------------------------------------------------------------------

    def _event_json(self, e: StoredObject) -> dict[str, Any]:
        return {
            "id": e.object_id,
            "createdDateTime": format_datetime_ms(e.created_ms),
            "modificationDateTime": format_datetime_ms(e.modified_ms),
            "objectType": "EVENT",
            **e.body,
        }

    def _dispatch(self) -> DispatchEvents:
        if self.dispatch is None:
            raise OpenAdrError(503, "dispatch is not running in this aggregator process")
        return self.dispatch

    async def list_events(
        self,
        *,
        program_id: str | None,
        active: bool | None,
        target_type: str | None,
        target_values: list[str],
        skip: int,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Events, of a program, only those not over (`active`), filtered by target."""
        now = int(self._clock())
        events = await self.store.list_events(
            program_id=program_id, ends_after=now if active else None
        )
        items = [
            self._event_json(e)
            for e in events
            if matches_targets(e.body.get("targets"), target_type, target_values)
        ]
        return _page(items, skip, limit)

    async def get_event(self, event_id: str) -> dict[str, Any]:
        """One event; 404 when there is none."""
        return self._event_json(await self._event(event_id))

    async def _event(self, event_id: str) -> StoredObject:
        e = await self.store.get_event(event_id)
        if e is None:
            raise OpenAdrError(404, f"there is no event {event_id}")
        return e

    async def _map(
        self, body: dict[str, Any], event_id: str
    ) -> tuple[EventRequest | None, int, int]:
        program = await self.store.get_program(body["programID"])
        if program is None:
            raise bad(f"there is no program {body['programID']}")
        check_interval_period(body.get("intervalPeriod"), "intervalPeriod")
        req = event_request(program.body, body, program_id=program.object_id, event_id=event_id)
        times = event_times(body)
        return req, times.start, times.end

    async def create_event(self, body: dict[str, Any], *, by: str) -> dict[str, Any]:
        """Store an event and create the dispatch event it stands for."""
        event_id = uuid.uuid4().hex
        req, start, end = await self._map(body, event_id)
        dispatch_id = None
        if req is not None:
            view = await self._call(self._dispatch().create_event(req, by=f"openadr:{by}"))
            dispatch_id = view.event_id
        try:
            await self.store.insert_event(
                event_id, body["programID"], dispatch_id, start, end, body, self._now_ms()
            )
        except Exception:
            if dispatch_id is not None:  # do not leave a dispatch event nobody can see
                await self._dispatch().cancel_event(dispatch_id, by=f"openadr:{by}")
            raise
        return await self.get_event(event_id)

    async def update_event(self, event_id: str, body: dict[str, Any], *, by: str) -> dict[str, Any]:
        """Replace an event: its dispatch event is modified (or created, or cancelled when the
        event now asks for nothing, as SIMPLE level 0 does)."""
        old = await self._event(event_id)
        req, start, end = await self._map(body, event_id)
        dispatch_id = old.dispatch_event_id
        who = f"openadr:{by}"
        if req is not None and dispatch_id is not None:
            await self._call(self._dispatch().modify_event(dispatch_id, req, by=who))
        elif req is not None:
            dispatch_id = (await self._call(self._dispatch().create_event(req, by=who))).event_id
        elif dispatch_id is not None:
            await self._cancel(dispatch_id, who)
            dispatch_id = None
        await self.store.update_event(
            event_id, body["programID"], dispatch_id, start, end, body, self._now_ms()
        )
        return await self.get_event(event_id)

    async def delete_event(self, event_id: str, *, by: str) -> dict[str, Any]:
        """Cancel the event's dispatch event and remove the event (its reports stay)."""
        e = await self._event(event_id)
        if e.dispatch_event_id is not None:
            await self._cancel(e.dispatch_event_id, f"openadr:{by}")
        await self.store.mark_event_deleted(event_id, self._now_ms())
        return self._event_json(e)

    async def _cancel(self, dispatch_id: str, who: str) -> None:
        view = await self._dispatch().get_event(dispatch_id)
        if view is not None and view.status not in ("cancelled", "completed"):
            await self._call(self._dispatch().cancel_event(dispatch_id, by=who))

    @staticmethod
    async def _call(coro: Any) -> EventView:
        try:
            view: EventView = await coro
        except ValueError as exc:  # the dispatch service's plain refusal
            raise bad(str(exc)) from None
        return view

    async def dispatch_event_id(self, event_id: str) -> str | None:
        """The dispatch event an OpenADR event became (deleted events too), or None."""
        e = await self.store.get_event(event_id, deleted=True)
        return None if e is None else e.dispatch_event_id

    # --- reports -------------------------------------------------------------------------

    async def list_reports(
        self,
        *,
        program_id: str | None,
        event_id: str | None,
        client_name: str | None,
        skip: int,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Reports, filtered. gridmint's own are brought up to date first."""
        if client_name in (None, REPORT_CLIENT) and self.dispatch is not None:
            await self._refresh_reports(program_id, event_id)
        rows = await self.store.list_reports(
            program_id=program_id, event_id=event_id, client_name=client_name
        )
        return _page([_report_json(r) for r in rows], skip, limit)

    async def create_report(self, body: dict[str, Any]) -> dict[str, Any]:
        """Store a VEN's report on an event of a program."""
        e = await self.store.get_event(body["eventID"], deleted=True)
        if e is None or e.program_id != body["programID"]:
            raise bad(f"there is no event {body['eventID']} in program {body['programID']}")
        if body["clientName"] == REPORT_CLIENT:
            raise bad(f"clientName {REPORT_CLIENT!r} is gridmint's own")
        for r in body.get("resources") or ():
            check_interval_period(r.get("intervalPeriod"), "resources.intervalPeriod")
        report_id = uuid.uuid4().hex
        await self.store.put_report(
            report_id, body["programID"], body["eventID"], body["clientName"], body, self._now_ms()
        )
        rows = await self.store.list_reports(event_id=body["eventID"])
        return next(_report_json(r) for r in rows if r.object_id == report_id)

    async def _refresh_reports(self, program_id: str | None, event_id: str | None) -> None:
        dispatch = self._dispatch()
        now = int(self._clock())
        events = await self.store.list_events(
            program_id=program_id, event_id=event_id, deleted=True
        )
        made = {
            r.event_id: r.modified_ms
            for r in await self.store.list_reports(
                program_id=program_id, event_id=event_id, client_name=REPORT_CLIENT
            )
        }
        for e in events:
            if e.dispatch_event_id is None:
                continue
            settled_ms = (e.end_s + REPORT_SETTLE_S) * 1000
            final = now * 1000 >= settled_ms
            if final and made.get(e.object_id, 0) >= settled_ms:
                continue  # made after the event settled: it no longer changes
            view = await dispatch.get_event(e.dispatch_event_id)
            perf = await dispatch.performance(e.dispatch_event_id)
            if view is None or perf is None:
                continue
            body = performance_report(e, view, perf)
            report_id = f"{e.object_id}-gm"
            if final or await self.store.get_report_body(report_id) != dump_body(body):
                await self.store.put_report(
                    report_id, e.program_id, e.object_id, REPORT_CLIENT, body, self._now_ms()
                )


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _report_json(r: StoredObject) -> dict[str, Any]:
    return {
        "id": r.object_id,
        "createdDateTime": format_datetime_ms(r.created_ms),
        "modificationDateTime": format_datetime_ms(r.modified_ms),
        "objectType": "REPORT",
        **r.body,
    }


_REPORT_DESCRIPTORS = [
    {"payloadType": "SETPOINT", "readingType": "DIRECT_READ", "units": "KW"},
    {"payloadType": "BASELINE", "readingType": "ESTIMATED", "units": "KW"},
    {"payloadType": "DEMAND", "readingType": "DIRECT_READ", "units": "KW"},
    {"payloadType": "STORAGE_CHARGE_LEVEL", "readingType": "DIRECT_READ", "units": "PERCENT"},
]


def performance_report(
    event: StoredObject, view: EventView, perf: EventPerformance
) -> dict[str, Any]:
    """gridmint's report on one event: a resource per site (requested, baseline, measured
    power and state of charge over the event) and AGGREGATED_REPORT with the group's series.

    All in kW, as the dispatch service measures them (cloud.domain.dispatch_events): SETPOINT
    the flow requested while the event runs, BASELINE the flow before it, DEMAND the flow
    measured, of the flow the control steers (battery for DISPATCH_SETPOINT, the grid connection
    for the capacity limits and SIMPLE; + = discharge / into the home's bus, grid + = import).
    The response is DEMAND - BASELINE."""
    req = view.request
    period = {"start": format_datetime_s(req.start), "duration": format_duration(req.duration_s)}
    sites = []
    for s in perf.sites:
        payloads: list[dict[str, Any]] = [
            {"type": "SETPOINT", "values": [_kw(s.requested_w)]},
            {"type": "BASELINE", "values": [_kw(s.baseline_w)]},
            {"type": "DEMAND", "values": [_kw(s.delivered_w)]},
        ]
        if s.soc_permille is not None:
            payloads.append({"type": "STORAGE_CHARGE_LEVEL", "values": [s.soc_permille / 10]})
        sites.append(
            {
                "resourceName": s.site_id,
                "intervalPeriod": period,
                "intervals": [{"id": 0, "payloads": payloads}],
            }
        )
    series = perf.series or [(req.start, perf.requested_w, perf.delivered_w)]
    intervals = []
    for i, (t, requested_w, delivered_w) in enumerate(series):
        step = (series[i + 1][0] - t) if i + 1 < len(series) else 0
        intervals.append(
            {
                "id": i,
                "intervalPeriod": {
                    "start": format_datetime_s(t),
                    "duration": format_duration(max(step, 0)),
                },
                "payloads": [
                    {"type": "SETPOINT", "values": [_kw(requested_w)]},
                    {"type": "BASELINE", "values": [_kw(perf.baseline_w)]},
                    {"type": "DEMAND", "values": [_kw(delivered_w)]},
                ],
            }
        )
    return {
        "programID": event.program_id,
        "eventID": event.object_id,
        "clientName": REPORT_CLIENT,
        "reportName": f"gridmint dispatch {view.event_id} ({view.status})",
        "payloadDescriptors": _REPORT_DESCRIPTORS,
        "resources": [
            {"resourceName": "AGGREGATED_REPORT", "intervalPeriod": period, "intervals": intervals},
            *sites,
        ],
    }
