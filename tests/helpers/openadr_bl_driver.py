"""A utility's business-logic client against gridmint's VTN: openadr3-client (BL role, OpenADR
3.0.1), run as a separate process by tests/integration/test_openadr_vtn.py.

openadr3-client needs Python 3.12+, so it lives in its own virtual environment
(`.venv-openadr`, made by scripts/test). Usage:

    python openadr_bl_driver.py BASE_URL CLIENT_ID SECRET STEP [ARGS...]

Steps print one JSON object on stdout:
  create START_ISO   program + event (DISPATCH_SETPOINT 2.5 kW for 1 h, randomizeStart 5 min)
  modify EVENT_ID    the event's setpoint to 3 kW
  delete EVENT_ID    delete the event
  reports PROGRAM_ID EVENT_ID
  events PROGRAM_ID
  try-create         create a program; prints the HTTP status the VTN answered
"""

import json
import os
import sys
from datetime import datetime, timedelta

from openadr3_client._models.common.interval import Interval
from openadr3_client._models.common.interval_period import IntervalPeriod
from openadr3_client.bl.http_factory import BusinessLogicHttpClientFactory
from openadr3_client.oadr301.models.event.event import EventUpdate, NewEvent
from openadr3_client.oadr301.models.event.event_payload import (
    EventPayload,
    EventPayloadDescriptor,
    EventPayloadType,
)
from openadr3_client.oadr301.models.program.program import NewProgram
from openadr3_client.oadr301.models.target import Target
from openadr3_client.oadr301.models.unit import Unit
from openadr3_client.version import OADRVersion
from requests import HTTPError

# The scopes asked for (space separated in OPENADR_SCOPES): a client asks for the ones it has,
# since oauthlib refuses a token whose scope is narrower than asked.
SCOPES = os.environ.get("OPENADR_SCOPES", "read_all write_programs write_events").split()


def main() -> None:
    base, client_id, secret, step, *args = sys.argv[1:]
    bl = BusinessLogicHttpClientFactory.create_http_bl_client(
        vtn_base_url=base,
        client_id=client_id,
        client_secret=secret,
        token_url=f"{base}/auth/token",
        scopes=SCOPES,
        version=OADRVersion.OADR_301,
    )
    out: object
    if step == "create":
        start = datetime.fromisoformat(args[0])
        program = bl.programs.create_program(
            new_program=NewProgram(
                program_name="gridmint-peak",
                program_long_name="Evening peak support from home batteries",
                payload_descriptors=(
                    EventPayloadDescriptor(
                        payload_type=EventPayloadType.DISPATCH_SETPOINT, units=Unit.KW
                    ),
                ),
                targets=(Target(type="GROUP", values=("zone:demo-zone-1",)),),
            )
        )
        event = bl.events.create_event(
            new_event=NewEvent(
                programID=program.id,
                event_name="evening peak",
                priority=1,
                interval_period=IntervalPeriod(
                    start=start,
                    duration=timedelta(hours=1),
                    randomize_start=timedelta(minutes=5),
                ),
                intervals=(
                    Interval(
                        id=0,
                        payloads=(
                            EventPayload(type=EventPayloadType.DISPATCH_SETPOINT, values=(2.5,)),
                        ),
                    ),
                ),
            )
        )
        out = {
            "program": program.model_dump(mode="json", by_alias=True),
            "event": event.model_dump(mode="json", by_alias=True),
        }
    elif step == "modify":
        event = bl.events.get_event_by_id(args[0])
        updated = event.update(
            EventUpdate(
                intervals=(
                    Interval(
                        id=0,
                        payloads=(
                            EventPayload(type=EventPayloadType.DISPATCH_SETPOINT, values=(3.0,)),
                        ),
                    ),
                )
            )
        )
        out = bl.events.update_event_by_id(args[0], updated).model_dump(mode="json", by_alias=True)
    elif step == "delete":
        out = bl.events.delete_event_by_id(args[0]).model_dump(mode="json", by_alias=True)
    elif step == "reports":
        reports = bl.reports.get_reports(
            pagination=None, program_id=args[0], event_id=args[1], client_name=None
        )
        out = [r.model_dump(mode="json", by_alias=True) for r in reports]
    elif step == "events":
        events = bl.events.get_events(target=None, pagination=None, program_id=args[0])
        out = [e.model_dump(mode="json", by_alias=True) for e in events]
    elif step == "try-create":
        try:
            bl.programs.create_program(new_program=NewProgram(program_name="not-allowed"))
            out = {"status": 201}
        except HTTPError as exc:
            out = {"status": exc.response.status_code, "body": exc.response.json()}
    else:
        raise SystemExit(f"unknown step {step}")
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
