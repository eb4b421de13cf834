"""gridmint's OpenADR 3.0.1 VTN over HTTP, under `/openadr3/3.0.1` (docs/openadr.md).

Owns: the routes, input validation of the spec's JSON shapes, OAuth2 client credentials at
`/auth/token`, scope checks, and errors as the spec's problem+json (status, title, detail).
The rules are cloud.services.openadr's; the mapping to dispatch events cloud.domain.openadr's.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

import base64
import binascii
from http import HTTPStatus
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud.api.deps import CtxDep
from cloud.domain.openadr import BASE_PATH, OpenAdrError
from cloud.services.openadr import MAX_LIMIT, OpenAdrService

PROBLEM = "application/problem+json"
ID = Field(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9_-]*$")


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The spec's problem object."""
    return JSONResponse(
        {
            "type": "about:blank",
            "title": HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
        },
        status_code=status,
        media_type=PROBLEM,
        headers=headers,
    )


# --- the spec's shapes (only what gridmint reads is typed; nulls are "not given") -------------


class _Obj(BaseModel):
    # Ignore the server's fields (id, createdDateTime, objectType...) a client sends back.
    model_config = ConfigDict(extra="ignore")


class IntervalPeriodIn(_Obj):
    start: str | None = Field(None, max_length=64)
    duration: str | None = Field(None, max_length=64)
    randomizeStart: str | None = Field(None, max_length=64)  # noqa: N815


class ValuesMapIn(_Obj):
    type: str = Field(min_length=1, max_length=128)
    values: list[Any] = Field(max_length=1000)


class IntervalIn(_Obj):
    id: int
    intervalPeriod: IntervalPeriodIn | None = None  # noqa: N815
    payloads: list[ValuesMapIn] = Field(min_length=1, max_length=100)


class ProgramIn(_Obj):
    programName: str = Field(min_length=1, max_length=128)  # noqa: N815
    programLongName: str | None = Field(None, max_length=256)  # noqa: N815
    retailerName: str | None = Field(None, max_length=128)  # noqa: N815
    retailerLongName: str | None = Field(None, max_length=256)  # noqa: N815
    programType: str | None = Field(None, max_length=128)  # noqa: N815
    country: str | None = Field(None, max_length=2)
    principalSubdivision: str | None = Field(None, max_length=8)  # noqa: N815
    timeZoneOffset: str | None = Field(None, max_length=64)  # noqa: N815
    intervalPeriod: IntervalPeriodIn | None = None  # noqa: N815
    programDescriptions: list[dict[str, Any]] | None = Field(None, max_length=100)  # noqa: N815
    bindingEvents: bool | None = None  # noqa: N815
    localPrice: bool | None = None  # noqa: N815
    payloadDescriptors: list[dict[str, Any]] | None = Field(None, max_length=100)  # noqa: N815
    targets: list[ValuesMapIn] | None = Field(None, max_length=100)


class EventIn(_Obj):
    programID: str = ID  # noqa: N815
    eventName: str | None = Field(None, max_length=128)  # noqa: N815
    priority: int | None = Field(None, ge=0)
    targets: list[ValuesMapIn] | None = Field(None, max_length=100)
    reportDescriptors: list[dict[str, Any]] | None = Field(None, max_length=100)  # noqa: N815
    payloadDescriptors: list[dict[str, Any]] | None = Field(None, max_length=100)  # noqa: N815
    intervalPeriod: IntervalPeriodIn | None = None  # noqa: N815
    intervals: list[IntervalIn] = Field(max_length=1000)


class ResourceIn(_Obj):
    resourceName: str = Field(min_length=1, max_length=128)  # noqa: N815
    intervalPeriod: IntervalPeriodIn | None = None  # noqa: N815
    intervals: list[IntervalIn] = Field(min_length=1, max_length=10000)


class ReportIn(_Obj):
    programID: str = ID  # noqa: N815
    eventID: str = ID  # noqa: N815
    clientName: str = Field(min_length=1, max_length=128)  # noqa: N815
    reportName: str | None = Field(None, max_length=128)  # noqa: N815
    payloadDescriptors: list[dict[str, Any]] | None = Field(None, max_length=100)  # noqa: N815
    resources: list[ResourceIn] = Field(min_length=1, max_length=10000)


def _body(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(exclude_none=True)


# --- dependencies -----------------------------------------------------------------------------


async def _service(ctx: CtxDep) -> OpenAdrService:
    if ctx.openadr is None:
        raise OpenAdrError(404, "this aggregator has no OpenADR VTN configured")
    return ctx.openadr


ServiceDep = Annotated[OpenAdrService, Depends(_service)]


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def scope(name: str) -> Any:
    """A dependency: the calling client's id when its token has scope `name` (401/403)."""

    async def dependency(request: Request, vtn: ServiceDep) -> str:
        return vtn.authorize(_bearer(request), name)

    return Depends(dependency)


Skip = Annotated[int, Query(ge=0)]
Limit = Annotated[int, Query(ge=0, le=MAX_LIMIT)]
TargetValues = Annotated[list[str], Query(alias="targetValues")]

router = APIRouter(prefix=BASE_PATH, tags=["openadr3"])


# --- auth -------------------------------------------------------------------------------------


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="openadr3"'
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


@router.post("/auth/token", summary="OAuth2 client credentials grant (RFC 6749 §4.4)")
async def token(request: Request, vtn: ServiceDep) -> JSONResponse:
    """Form fields grant_type=client_credentials, client_id and client_secret (or HTTP Basic),
    optional scope (space separated) -> a bearer access token."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return _oauth_error(
            400, "invalid_request", "send an application/x-www-form-urlencoded body"
        )
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
    if form.get("grant_type") != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "grant_type must be client_credentials")
    client_id, secret = form.get("client_id"), form.get("client_secret")
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            client_id, _, secret = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return _oauth_error(401, "invalid_client", "bad Basic credentials")
    if not client_id or not secret:
        return _oauth_error(401, "invalid_client", "client_id and client_secret are needed")
    try:
        access, lifetime, granted = vtn.token(client_id, secret, form.get("scope"))
    except ValueError:
        return _oauth_error(401, "invalid_client", "unknown client or wrong secret")
    return JSONResponse(
        {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": " ".join(sorted(granted)),
        },
        headers={"Cache-Control": "no-store"},
    )


# --- programs ---------------------------------------------------------------------------------


@router.get("/programs")
async def list_programs(
    vtn: ServiceDep,
    _client: str = scope("read_all"),
    targetType: str | None = None,  # noqa: N803
    target_values: TargetValues = [],  # noqa: B006
    skip: Skip = 0,
    limit: Limit = MAX_LIMIT,
) -> JSONResponse:
    return JSONResponse(
        await vtn.list_programs(
            target_type=targetType, target_values=target_values, skip=skip, limit=limit
        )
    )


@router.post("/programs", status_code=201)
async def create_program(
    program: ProgramIn, vtn: ServiceDep, _client: str = scope("write_programs")
) -> JSONResponse:
    return JSONResponse(await vtn.create_program(_body(program)), status_code=201)


@router.get("/programs/{programID}")
async def get_program(
    programID: str,  # noqa: N803
    vtn: ServiceDep,
    _client: str = scope("read_all"),
) -> JSONResponse:
    return JSONResponse(await vtn.get_program(programID))


@router.put("/programs/{programID}")
async def update_program(
    programID: str,  # noqa: N803
    program: ProgramIn,
    vtn: ServiceDep,
    _client: str = scope("write_programs"),
) -> JSONResponse:
    return JSONResponse(await vtn.update_program(programID, _body(program)))


@router.delete("/programs/{programID}")
async def delete_program(
    programID: str,  # noqa: N803
    vtn: ServiceDep,
    _client: str = scope("write_programs"),
) -> JSONResponse:
    return JSONResponse(await vtn.delete_program(programID))


# --- events -----------------------------------------------------------------------------------


@router.get("/events")
async def list_events(
    vtn: ServiceDep,
    _client: str = scope("read_all"),
    programID: str | None = None,  # noqa: N803
    active: bool | None = None,
    targetType: str | None = None,  # noqa: N803
    target_values: TargetValues = [],  # noqa: B006
    skip: Skip = 0,
    limit: Limit = MAX_LIMIT,
) -> JSONResponse:
    return JSONResponse(
        await vtn.list_events(
            program_id=programID,
            active=active,
            target_type=targetType,
            target_values=target_values,
            skip=skip,
            limit=limit,
        )
    )


@router.post("/events", status_code=201)
async def create_event(
    event: EventIn, vtn: ServiceDep, client: str = scope("write_events")
) -> JSONResponse:
    return JSONResponse(await vtn.create_event(_body(event), by=client), status_code=201)


@router.get("/events/{eventID}")
async def get_event(
    eventID: str,  # noqa: N803
    vtn: ServiceDep,
    _client: str = scope("read_all"),
) -> JSONResponse:
    return JSONResponse(await vtn.get_event(eventID))


@router.put("/events/{eventID}")
async def update_event(
    eventID: str,  # noqa: N803
    event: EventIn,
    vtn: ServiceDep,
    client: str = scope("write_events"),
) -> JSONResponse:
    return JSONResponse(await vtn.update_event(eventID, _body(event), by=client))


@router.delete("/events/{eventID}")
async def delete_event(
    eventID: str,  # noqa: N803
    vtn: ServiceDep,
    client: str = scope("write_events"),
) -> JSONResponse:
    return JSONResponse(await vtn.delete_event(eventID, by=client))


# --- reports ----------------------------------------------------------------------------------


@router.get("/reports")
async def list_reports(
    vtn: ServiceDep,
    _client: str = scope("read_all"),
    programID: str | None = None,  # noqa: N803
    eventID: str | None = None,  # noqa: N803
    clientName: str | None = None,  # noqa: N803
    skip: Skip = 0,
    limit: Limit = MAX_LIMIT,
) -> JSONResponse:
    return JSONResponse(
        await vtn.list_reports(
            program_id=programID,
            event_id=eventID,
            client_name=clientName,
            skip=skip,
            limit=limit,
        )
    )


@router.post("/reports", status_code=201)
async def create_report(
    report: ReportIn, vtn: ServiceDep, _client: str = scope("write_reports")
) -> JSONResponse:
    return JSONResponse(await vtn.create_report(_body(report)), status_code=201)


# --- errors -----------------------------------------------------------------------------------


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", ""))
    return "; ".join(parts) or "the request is not valid"


def install_error_handlers(app: FastAPI) -> None:
    """Answer OpenAdrError, and validation and HTTP errors (unknown path, method not allowed)
    under the VTN's prefix, as problem+json."""

    @app.exception_handler(OpenAdrError)
    async def _openadr_error(_request: Request, exc: OpenAdrError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return problem(exc.status, exc.detail, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith(BASE_PATH + "/"):
            return problem(400, _validation_detail(exc))
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith(BASE_PATH + "/"):
            return problem(exc.status_code, str(exc.detail), dict(exc.headers or {}) or None)
        return await http_exception_handler(request, exc)
