"""The ledger's HTTP face: the signed checkpoint, the log key, consistency and inclusion proofs,
and balances recomputed from the entries.

Owns: those routes. Checkpoints, the key and consistency proofs carry only sizes and hashes and
are public, as a transparency log's are. Inclusion proofs carry the entry (a site's energy for
one interval), so they need a person with a fleet role, a homeowner for their own site, or the
device itself (device_routes: a signed probe).

No `from __future__ import annotations`: FastAPI reads these signatures (see cloud.api.deps).
"""

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from cloud.api.deps import ANYONE, AccountsDep, CtxDep, LedgerDep, require
from cloud.auth import Principal, Role, visible_site_ids
from cloud.domain.certificates import avoided_co2_g, forest_milliacres
from cloud.services.ledger import LedgerService, Proof
from cloud.services.ledger_export import collect_export
from protocol.ledger_leaf import decode_leaf
from protocol.merkle import ProofError
from rules.ledger import Entry, site_account


class LedgerKey(BaseModel):
    """The log's name and the key that signs its checkpoints (C2SP verifier key)."""

    origin: str
    verifier_key: str


class InclusionProof(BaseModel):
    """A token's minting entry, its place in the log and the path to a signed checkpoint."""

    token_id: str
    record_hash: str
    leaf_index: int
    leaf: str
    tree_size: int
    path: list[str]
    checkpoint: str


class ConsistencyProof(BaseModel):
    """The log of `old_size` is a prefix of the log of `new_size`."""

    old_size: int
    new_size: int
    path: list[str]


class SiteBalance(BaseModel):
    """A site's token balances (Wh) and payment balance (minor units), from replay."""

    site_id: str
    tgen_wh: int
    tradable_wh: int
    tstorage_wh: int
    set_aside_wh: int
    credits_minor: int
    generated_wh: int = Field(description="Tgen ever minted for this site's generation")
    avoided_co2_g: int = Field(description="at the grid emission factor (g CO2 per kWh)")
    forest_milliacres: int = Field(
        description="thousandths of an acre of forest absorbing that CO2 in a year"
    )


class LedgerExport(BaseModel):
    """The export's files by name (log.json, devices/records/entries/checkpoints.jsonl)."""

    files: dict[str, str]


class LedgerSummary(BaseModel):
    """The log's size, what was closed, what arrived too late, and the balances."""

    grid_g_co2_per_kwh: int
    size: int
    checkpoint_size: int
    closed_intervals: int
    late_records: int
    sites: list[SiteBalance]


def proof_public(p: Proof) -> InclusionProof:
    return InclusionProof(
        token_id=p.token_id,
        record_hash=p.record_hash.hex(),
        leaf_index=p.leaf_index,
        leaf=p.leaf.hex(),
        tree_size=p.tree_size,
        path=[h.hex() for h in p.path],
        checkpoint=p.checkpoint,
    )


def _running(ledger: LedgerService | None) -> LedgerService:
    """The ledger; 503 when this process runs without one."""
    if ledger is None:
        raise HTTPException(503, "the ledger is not running in this process")
    return ledger


router = APIRouter()


@router.get("/api/v1/ledger/checkpoint", response_class=PlainTextResponse, tags=["ledger"])
async def checkpoint(ledger: LedgerDep) -> PlainTextResponse:
    """The newest signed checkpoint (C2SP signed note: origin, size, root, signature)."""
    cp = await _running(ledger).store.latest_checkpoint()
    if cp is None:
        raise HTTPException(404, "no checkpoint yet: no interval has been closed")
    return PlainTextResponse(cp.note, media_type="text/plain; charset=utf-8")


@router.get("/api/v1/ledger/key", response_model=LedgerKey, tags=["ledger"])
async def key(ledger: LedgerDep) -> LedgerKey:
    """The key devices and verifiers pin to check checkpoints."""
    led = _running(ledger)
    return LedgerKey(origin=led.origin, verifier_key=led.verifier_key)


@router.get("/api/v1/ledger/consistency", response_model=ConsistencyProof, tags=["ledger"])
async def consistency(
    ledger: LedgerDep,
    old: Annotated[int, Query(ge=0, le=2**62)],
    new: Annotated[int, Query(ge=0, le=2**62)],
) -> ConsistencyProof:
    """Proof that the log at size `new` extends the log at size `old` (RFC 9162 2.1.4)."""
    try:
        path = _running(ledger).consistency(old, new)
    except (ProofError, ValueError) as exc:
        raise HTTPException(422, str(exc)) from None
    return ConsistencyProof(old_size=old, new_size=new, path=[h.hex() for h in path])


@router.get(
    "/api/v1/ledger/proofs/tokens/{token_id}", response_model=InclusionProof, tags=["ledger"]
)
async def token_proof(
    token_id: str,
    ledger: LedgerDep,
    accounts: AccountsDep,
    p: Annotated[Principal, Depends(require(*ANYONE, action="read ledger proofs"))],
    size: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> InclusionProof:
    """Inclusion proof of the entry that minted a token (a homeowner: own sites only)."""
    proof = await _running(ledger).proof_for_token(token_id, size)
    if proof is None:
        raise HTTPException(404, f"token {token_id} is not in a checkpointed ledger entry")
    sites = await visible_site_ids(accounts, p)
    if sites is not None:
        entry_site = _leaf_site(proof.leaf)
        if entry_site not in sites:
            raise HTTPException(403, "this token belongs to another site")
    return proof_public(proof)


@router.get(
    "/api/v1/ledger/export",
    response_model=LedgerExport,
    tags=["ledger"],
    dependencies=[Depends(require(Role.APPROVER, Role.GRID_OPERATOR, action="export the ledger"))],
)
async def export(ctx: CtxDep) -> LedgerExport:
    """One consistent export (the five files of `gridmint cloud export-ledger`) for
    `gridmint verify --api`."""
    led = _running(ctx.ledger)
    files = await collect_export(
        led.store,
        origin=led.origin,
        log_public_key=led.public_key,
        deployment=ctx.deployment,
        market_mode=None if ctx.market is None else ctx.market.config.mode.value,
    )
    return LedgerExport(files=files)


@router.get(
    "/api/v1/ledger/summary",
    response_model=LedgerSummary,
    tags=["ledger"],
)
async def summary(
    ctx: CtxDep,
    p: Annotated[Principal, Depends(require(*ANYONE, action="read ledger balances"))],
) -> LedgerSummary:
    """Log size and per-site balances recomputed from the entries (a homeowner: own sites)."""
    sites = await visible_site_ids(ctx.accounts, p)
    led = _running(ctx.ledger)
    co2_factor = ctx.co2_factor
    state = led.engine.state
    cp = await led.store.latest_checkpoint()
    return LedgerSummary(
        grid_g_co2_per_kwh=co2_factor,
        size=led.log.size,
        checkpoint_size=cp.size if cp else 0,
        closed_intervals=len(state.closed),
        late_records=await led.store.late_records(),
        sites=[
            SiteBalance(
                site_id=s,
                tgen_wh=state.tgen_wh(s),
                tradable_wh=state.tradable_wh(s),
                tstorage_wh=state.tstorage_wh(s),
                set_aside_wh=state.set_aside_wh(s),
                credits_minor=state.balance(site_account(s)),
                generated_wh=led.minted_wh.get(s, 0),
                avoided_co2_g=avoided_co2_g(led.minted_wh.get(s, 0), co2_factor),
                forest_milliacres=forest_milliacres(
                    avoided_co2_g(led.minted_wh.get(s, 0), co2_factor)
                ),
            )
            for s in state.sites()
            if sites is None or s in sites
        ],
    )


def _leaf_site(leaf: bytes) -> str:
    return Entry.from_bytes(decode_leaf(leaf).entry).site
