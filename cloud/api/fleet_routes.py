"""The device registry as people use it: the fleet list, and the installers' and approvers'
decisions (register a device, approve/reject/revoke it, revoke a signing key).

Owns: those routes. A homeowner's fleet list shows their own sites' devices only.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException

from cloud.api.deps import (
    ANYONE,
    AccountsDep,
    CredentialsDep,
    CtxDep,
    DeviceViewsDep,
    StoreDep,
    require,
)
from cloud.api.device_routes import KeyPublic, KeyRevocation, key_public
from cloud.api.fleet_views import device_public, devices_public
from cloud.api.schemas import DeviceCreate, DevicePublic, DeviceStatusChange, device_identity
from cloud.auth import Principal, Role, visible_site_ids
from protocol import cose

log = logging.getLogger(__name__)
router = APIRouter()


@router.get("/api/v1/devices", response_model=list[DevicePublic], tags=["fleet"])
async def list_devices(
    store: StoreDep,
    accounts: AccountsDep,
    p: Annotated[Principal, Depends(require(*ANYONE, action="list devices"))],
) -> list[DevicePublic]:
    """Registered devices with token counts and generation (a homeowner: their own)."""
    return await devices_public(store, await visible_site_ids(accounts, p))


@router.post(
    "/api/v1/admin/devices",
    response_model=DevicePublic,
    status_code=201,
    tags=["admin"],
    dependencies=[Depends(require(Role.INSTALLER, action="register devices"))],
)
async def register_device(body: DeviceCreate, store: StoreDep) -> DevicePublic:
    """Register a device and its Ed25519 public key (installers; enrollment comes later)."""
    try:
        public_key = device_identity(
            body.public_key, (body.device_id, "device id"), (body.site_id, "site id")
        )
    except ValueError as exc:  # TopicError is a ValueError
        raise HTTPException(422, str(exc)) from None
    try:
        await store.add_device(
            body.device_id,
            body.site_id,
            public_key,
            cose.key_id(public_key),
            body.capacity_w,
            body.zone,
            status=body.status,
        )
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None
    device = await device_public(store, body.device_id)
    if device is None:
        raise HTTPException(500, "device vanished after registration")
    return device


@router.post(
    "/api/v1/admin/devices/{device_id}/status",
    response_model=DevicePublic,
    tags=["admin"],
)
async def set_device_status(
    device_id: str,
    body: DeviceStatusChange,
    store: StoreDep,
    views: DeviceViewsDep,
    credentials: CredentialsDep,
    p: Annotated[Principal, Depends(require(Role.APPROVER, action="approve or revoke devices"))],
) -> DevicePublic:
    """Approve, reject or revoke a device (a reason is required to reject or revoke).

    Approving counts the tokens it sent while pending. Every decision is logged with the
    approver, the time, old -> new status and the reason (see the device's page).
    """
    problem = body.missing_reason()
    if problem:
        raise HTTPException(422, problem)
    try:
        await views.decide(device_id, body.status, p.account_id, body.reason)
    except KeyError:
        raise HTTPException(404, f"device {device_id!r} is not registered") from None
    if credentials is not None:
        # The broker must follow the registry: revoke certificates, rewrite the ACL, reload.
        await credentials.device_status_changed(device_id, body.status)
    device = await device_public(store, device_id)
    if device is None:
        raise HTTPException(404, f"device {device_id!r} is not registered")
    return device


@router.post(
    "/api/v1/admin/devices/{device_id}/keys/{kid}/revoke",
    response_model=KeyPublic,
    tags=["admin"],
)
async def revoke_key(
    device_id: str,
    kid: str,
    body: KeyRevocation,
    ctx: CtxDep,
    p: Annotated[Principal, Depends(require(Role.APPROVER, action="revoke device keys"))],
) -> KeyPublic:
    """Revoke a compromised signing key: every record it signs from now on is refused
    (`key_revoked`), whatever its interval. Records already accepted stay."""
    try:
        raw_kid = bytes.fromhex(kid)
        key = await ctx.store.revoke_key(device_id, raw_kid, int(ctx.now() * 1000))
    except ValueError:
        raise HTTPException(422, f"{kid!r} is not a key id (16 hex digits)") from None
    except KeyError as exc:
        raise HTTPException(404, str(exc).strip("'\"")) from None
    log.warning("key %s of %s revoked by %s: %s", kid, device_id, p.account_id, body.reason)
    return key_public(key)
