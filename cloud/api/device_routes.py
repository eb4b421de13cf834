"""What a device asks of the aggregator over HTTP: a commissioning probe, signing-key rotation and
TLS certificate renewal.

Owns: those routes. None takes a person's credentials: each request is signed by the device's
current key (Ed25519 statement, or the TLS key for renewal), which is the authentication.
A refused request is stored as a rejection with its reason, like a refused token.

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from cloud.api.deps import ApiContext, CtxDep, StoreDep
from cloud.api.ledger_routes import InclusionProof, proof_public
from cloud.domain.devices import DeviceStatus, signing_refusal
from cloud.pki import PkiError
from cloud.storage.store import DeviceKey
from protocol import cose, statements
from protocol.ledger_leaf import decode_leaf
from protocol.reasons import RejectReason
from rules.ledger import Entry

PROBE_MAX_SKEW_MS = 10 * 60 * 1000  # a probe older or newer than this is refused as stale
StatementT = TypeVar("StatementT", statements.Probe, statements.KeyRotation)


class SignedStatement(BaseModel):
    """A COSE_Sign1 statement from `protocol.statements`, hex."""

    # Whole bytes only: an odd number of hex digits is a 422, not a failed fromhex.
    statement: str = Field(max_length=4096, pattern="^(?:[0-9a-fA-F]{2})*$")


class ProbeResult(BaseModel):
    """The aggregator's view of a commissioning probe."""

    device_id: str
    site_id: str
    status: str
    kid: str
    clock_offset_ms: int = Field(description="device clock minus aggregator clock")
    counts: bool = Field(description="True once approved: the device's tokens count")


class KeyPublic(BaseModel):
    """A device signing key and its validity (Unix seconds; valid_until null = open)."""

    kid: str
    valid_from: int
    valid_until: int | None
    revoked_ms: int | None = None


class KeyRevocation(BaseModel):
    """Why a key is revoked (kept in the aggregator's log)."""

    reason: str = Field(min_length=1, max_length=500)


class RotationResult(BaseModel):
    """The new key and the retiring one."""

    new: KeyPublic
    previous: KeyPublic


class ProofRequest(SignedStatement):
    """A fresh signed probe (the credential) and the token ids to prove."""

    token_ids: list[str] = Field(max_length=100)


class RenewalRequest(BaseModel):
    """A new TLS key's CSR, proven by the current certificate's key."""

    current_cert: str = Field(max_length=8192)
    csr: str = Field(max_length=8192)
    proof: str = Field(max_length=512, pattern="^[0-9a-fA-F]*$", description="hex signature")
    signed_at: datetime


class RenewalResult(BaseModel):
    """The renewed certificate."""

    client_cert: str
    ca_bundle: str


def key_public(k: DeviceKey) -> KeyPublic:
    """The wire form of a device key."""
    return KeyPublic(
        kid=k.kid.hex(), valid_from=k.valid_from, valid_until=k.valid_until, revoked_ms=k.revoked_ms
    )


router = APIRouter()


async def _refuse(
    ctx: ApiContext,
    status: int,
    device_id: str,
    reason: RejectReason,
    detail: str,
    body: bytes,
    route: str,
) -> HTTPException:
    """Store the refused request as a rejection; return the HTTPException to raise."""
    await ctx.store.add_rejection(
        f"http:{route}", body, str(reason), detail, int(ctx.now() * 1000), device_id
    )
    return HTTPException(status, f"{reason}: {detail}")


async def _signer(
    ctx: ApiContext, device_id: str, raw: bytes, route: str
) -> tuple[DeviceKey, str, DeviceStatus]:
    """The live key that signed `raw`, with the device's site and status; else refuse."""
    try:
        kid = statements.signer_kid(raw)
    except statements.StatementError as exc:
        raise await _refuse(
            ctx, 422, device_id, RejectReason.MALFORMED, str(exc), raw, route
        ) from None
    device = await ctx.store.get_device(device_id)
    key = await ctx.store.get_key(kid)
    refusal = signing_refusal(
        device_id, None if device is None else device.status, kid, key, int(ctx.now())
    )
    if refusal is not None:
        status = 404 if refusal.reason is RejectReason.UNKNOWN_DEVICE else 403
        raise await _refuse(ctx, status, device_id, refusal.reason, refusal.detail, raw, route)
    assert device is not None
    assert key is not None
    return key, device.site_id, device.status


async def _signed(
    ctx: ApiContext,
    device_id: str,
    raw: bytes,
    route: str,
    open_statement: Callable[[bytes, bytes, bytes], StatementT],
) -> tuple[DeviceKey, str, DeviceStatus, StatementT]:
    """Who signed `raw` (a live key of `device_id`) and what it states; else refuse."""
    key, site_id, status = await _signer(ctx, device_id, raw, route)
    try:
        stated = open_statement(raw, key.public_key, ctx.deployment.encode())
    except statements.StatementError as exc:
        raise await _refuse(
            ctx, 403, device_id, RejectReason.BAD_SIGNATURE, str(exc), raw, route
        ) from None
    if stated.device_id != device_id:
        raise await _refuse(
            ctx,
            403,
            device_id,
            RejectReason.TOPIC_MISMATCH,
            f"statement of {stated.device_id!r} sent for {device_id!r}",
            raw,
            route,
        )
    return key, site_id, status, stated


@router.post("/api/v1/devices/{device_id}/probe", response_model=ProbeResult, tags=["devices"])
async def probe(device_id: str, body: SignedStatement, ctx: CtxDep) -> ProbeResult:
    """Commissioning check: is this device known, is its key live, is its clock right?

    Signed by the device's key for this deployment; nothing is stored on success.
    """
    raw = bytes.fromhex(body.statement)
    key, site_id, status, stated = await _signed(
        ctx, device_id, raw, "probe", statements.open_probe
    )
    offset = stated.unix_ms - int(ctx.now() * 1000)
    if abs(offset) > PROBE_MAX_SKEW_MS:
        raise await _refuse(
            ctx,
            422,
            device_id,
            RejectReason.STALE_INTERVAL,
            f"the device clock is {offset / 1000:+.0f} s off the aggregator's",
            raw,
            "probe",
        )
    return ProbeResult(
        device_id=device_id,
        site_id=site_id,
        status=status,
        kid=key.kid.hex(),
        clock_offset_ms=offset,
        counts=status is DeviceStatus.APPROVED,
    )


@router.post(
    "/api/v1/devices/{device_id}/proofs",
    response_model=list[InclusionProof | None],
    tags=["devices", "ledger"],
)
async def device_proofs(
    device_id: str, body: ProofRequest, ctx: CtxDep
) -> list[InclusionProof | None]:
    """Inclusion proofs for the device's own tokens, asked with a fresh signed probe.

    One item per requested token id, in order; null for a token not in the ledger yet.
    """
    raw = bytes.fromhex(body.statement)
    # No freshness window here (unlike the probe route): a device's clock may run on a
    # different time base than ours, and the answer is only the device's own data, over TLS.
    await _signed(ctx, device_id, raw, "proofs", statements.open_probe)
    if ctx.ledger is None:
        raise HTTPException(503, "the ledger is not running in this process")
    proofs = await ctx.ledger.proofs_for_tokens(list(body.token_ids))
    out: list[InclusionProof | None] = []
    for token_id in body.token_ids:
        proof = proofs.get(token_id)
        if proof is not None:
            # Only the device's own records: the minting entry names each record's device.
            entry = Entry.from_bytes(decode_leaf(proof.leaf).entry)
            if not any(r.token_id == token_id and r.device_id == device_id for r in entry.refs):
                raise HTTPException(403, f"token {token_id} is not {device_id!r}'s")
        out.append(None if proof is None else proof_public(proof))
    return out


@router.post(
    "/api/v1/devices/{device_id}/keys",
    response_model=RotationResult,
    status_code=201,
    tags=["devices"],
)
async def rotate_key(device_id: str, body: SignedStatement, ctx: CtxDep) -> RotationResult:
    """Rotate the signing key: the request names the new key and is signed by the current one.

    The current key keeps verifying records of intervals that end within the overlap
    window (records already in the device's outbox); later ones must use the new key.
    """
    raw = bytes.fromhex(body.statement)
    key, _, _, stated = await _signed(
        ctx, device_id, raw, "rotate-key", statements.open_key_rotation
    )
    if abs(stated.unix_ms - ctx.now() * 1000) > PROBE_MAX_SKEW_MS:
        raise await _refuse(
            ctx,
            422,
            device_id,
            RejectReason.STALE_INTERVAL,
            "the rotation request is too old or from the future",
            raw,
            "rotate-key",
        )
    try:
        new, old = await ctx.store.rotate_key(
            device_id,
            key.kid,
            stated.new_public_key,
            cose.key_id(stated.new_public_key),
            int(ctx.now()),
            ctx.key_overlap_s,
        )
    except (KeyError, ValueError) as exc:
        raise HTTPException(409, str(exc).strip("'\"")) from None
    return RotationResult(new=key_public(new), previous=key_public(old))


@router.get("/api/v1/devices/{device_id}/keys", response_model=list[KeyPublic], tags=["devices"])
async def list_keys(device_id: str, store: StoreDep) -> list[KeyPublic]:
    """A device's public signing keys and their validity (public data, like a key server)."""
    if await store.get_device(device_id) is None:
        raise HTTPException(404, f"device {device_id!r} is not registered")
    return [key_public(k) for k in await store.list_keys(device_id)]


@router.post(
    "/api/v1/devices/{device_id}/certificate",
    response_model=RenewalResult,
    tags=["devices"],
)
async def renew_certificate(device_id: str, body: RenewalRequest, ctx: CtxDep) -> RenewalResult:
    """Renew the TLS client certificate before it expires, for a new key.

    Authenticated by a signature of the current certificate's key over the CSR.
    """
    credentials = ctx.credentials
    if credentials is None:
        raise HTTPException(404, "this aggregator issues no certificates")
    device = await ctx.store.get_device(device_id)
    if device is None or not device.status.may_sign:
        raise HTTPException(403, f"device {device_id!r} may not renew a certificate")
    try:
        cert = await credentials.renew(
            device_id,
            body.current_cert.encode(),
            body.csr.encode(),
            bytes.fromhex(body.proof),
            body.signed_at.astimezone(UTC),
        )
    except PkiError as exc:
        raise await _refuse(
            ctx,
            403,
            device_id,
            RejectReason.BAD_SIGNATURE,
            str(exc),
            body.csr.encode(),
            "certificate",
        ) from None
    return RenewalResult(client_cert=cert.decode(), ca_bundle=credentials.ca_bundle_pem.decode())
