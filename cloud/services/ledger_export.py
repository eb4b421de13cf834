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


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":"), sort_keys=True) + "\n")
            n += 1
    tmp.replace(path)
    return n


async def export_ledger(
    store: LedgerStore, directory: Path, *, origin: str, log_public_key: bytes, deployment: str
) -> ExportSummary:
    """Write log.json, devices.jsonl, records.jsonl, entries.jsonl, checkpoints.jsonl."""
    checkpoints = await store.checkpoints()
    size = checkpoints[-1].size if checkpoints else 0
    leaves = [row for row in await store.leaves() if row.seq < size]
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
    records = [
        {
            "token_id": r.token_id,
            "device_id": r.device_id,
            "seq": r.seq,
            "record_hash": r.record_hash.hex(),
            "envelope": r.envelope.hex(),
        }
        for r in await store.all_records()
    ]
    log = {
        "format": EXPORT_FORMAT,
        "origin": origin,
        "log_key": verifier_key_string(origin, log_public_key),
        "deployment": deployment,
    }
    entries = [{"index": row.seq, "leaf": row.leaf.hex()} for row in leaves]
    notes = [{"note": c.note} for c in checkpoints]

    def write() -> ExportSummary:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "log.json").write_text(json.dumps(log, indent=2, sort_keys=True) + "\n")
        return ExportSummary(
            directory,
            _write_jsonl(directory / "records.jsonl", records),
            _write_jsonl(directory / "devices.jsonl", devices.values()),
            _write_jsonl(directory / "entries.jsonl", entries),
            _write_jsonl(directory / "checkpoints.jsonl", notes),
        )

    return await asyncio.to_thread(write)
