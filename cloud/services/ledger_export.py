"""Export of the ledger for `gridmint verify`: signed records, device keys, log leaves and
signed checkpoints, as files anyone can check without our database or code beyond protocol/ and
the pure ledger rules.

Owns: the export format (docs/tokens.md, "Verifying the ledger"). Entries are cut at the newest
checkpoint, so every exported leaf is covered by a signature.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud.storage.ledger_store import LedgerStore
from protocol.checkpoint import verifier_key_string

EXPORT_FORMAT = "gridmint-export/v1"


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What was written."""

    directory: Path
    records: int
    devices: int
    entries: int
    checkpoints: int


def _jsonl(rows: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, separators=(",", ":"), sort_keys=True) + "\n" for row in rows)


async def collect_export(
    store: LedgerStore,
    *,
    origin: str,
    log_public_key: bytes,
    deployment: str,
    market_mode: str | None = None,
) -> dict[str, str]:
    """The export's files as text, keyed by file name: one consistent snapshot.

    Read order matters while the aggregator runs: checkpoints first (entries are cut at the
    newest), then leaves, then records, then device keys, so every exported record's key and
    every exported entry's records are already there when they are read.
    """
    checkpoints = await store.checkpoints()
    size = checkpoints[-1].size if checkpoints else 0
    leaves = [row for row in await store.leaves(0, size)] if size else []
    records = await store.all_records()
    devices: dict[str, dict[str, Any]] = {}
    for device, site, kid, pub, valid_from, valid_until in await store.device_keys():
        d = devices.setdefault(device, {"device_id": device, "site_id": site, "keys": []})
        d["keys"].append(
            {
                "kid": kid.hex(),
                "public_key": pub.hex(),
                "valid_from": valid_from,
                "valid_until": valid_until,
            }
        )
    log = {
        "format": EXPORT_FORMAT,
        "origin": origin,
        "log_key": verifier_key_string(origin, log_public_key),
        "deployment": deployment,
    }
    if market_mode is not None:  # how the verifier replays the market's order events
        log["market_mode"] = market_mode
    return {
        "log.json": json.dumps(log, indent=2, sort_keys=True) + "\n",
        "devices.jsonl": _jsonl(devices.values()),
        "records.jsonl": _jsonl(
            {
                "token_id": r.token_id,
                "device_id": r.device_id,
                "seq": r.seq,
                "record_hash": r.record_hash.hex(),
                "envelope": r.envelope.hex(),
            }
            for r in records
        ),
        "entries.jsonl": _jsonl({"index": row.seq, "leaf": row.leaf.hex()} for row in leaves),
        "checkpoints.jsonl": _jsonl({"note": c.note} for c in checkpoints),
    }


EXPORT_FILES = ("log.json", "devices.jsonl", "records.jsonl", "entries.jsonl", "checkpoints.jsonl")


def write_export(directory: Path, files: dict[str, str]) -> ExportSummary:
    """Write the export's files (each replaced atomically) and count their items."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in EXPORT_FILES:
        tmp = directory / (name + ".tmp")
        tmp.write_text(files[name], encoding="utf-8")
        tmp.replace(directory / name)
    lines = {n: files[n].count("\n") for n in EXPORT_FILES}
    return ExportSummary(
        directory,
        lines["records.jsonl"],
        lines["devices.jsonl"],
        lines["entries.jsonl"],
        lines["checkpoints.jsonl"],
    )


async def export_ledger(
    store: LedgerStore,
    directory: Path,
    *,
    origin: str,
    log_public_key: bytes,
    deployment: str,
    market_mode: str | None = None,
) -> ExportSummary:
    """Write log.json, devices.jsonl, records.jsonl, entries.jsonl, checkpoints.jsonl."""
    files = await collect_export(
        store,
        origin=origin,
        log_public_key=log_public_key,
        deployment=deployment,
        market_mode=market_mode,
    )
    return await asyncio.to_thread(write_export, directory, files)
