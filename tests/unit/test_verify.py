"""`gridmint verify`: a real export verifies, and every kind of tampering is found and located.

The export is built in-process by tests/helpers/ledger_export.py (FakeDevices sign records, the
LedgerEngine closes intervals, leaves go into a MerkleLog, checkpoints are signed notes), in the
format the aggregator's exporter writes. Each tamper test checks that verification fails AND that
the failure names the file, line and item that were changed.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from edge.minting import ChainState
from gridmint.cli import app
from gridmint.verify import Discrepancy, VerifyReport, verify_export
from protocol import cose
from protocol.checkpoint import Checkpoint, sign_checkpoint, verifier_key_string
from protocol.ledger_leaf import LedgerLeaf, decode_leaf
from rules.ledger import Burn, Entry, EntryKind
from tests.helpers.ledger_export import (
    ORIGIN,
    T0,
    LedgerExportBuilder,
    SampleExport,
    build_sample_export,
    leaf_of,
)

SEED = 20260601
SAMPLES = 40


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleExport:
    return build_sample_export(tmp_path_factory.mktemp("sample") / "export")


@pytest.fixture
def export(sample: SampleExport, tmp_path: Path) -> Path:
    """A private copy of the sample export, free to tamper with."""
    return Path(shutil.copytree(sample.directory, tmp_path / "export"))


# helpers ---------------------------------------------------------------------------------------


def lines(d: Path, name: str) -> list[str]:
    return (d / name).read_text().splitlines(keepends=True)


def write_lines(d: Path, name: str, rows: list[str]) -> None:
    (d / name).write_text("".join(rows))


def row(d: Path, name: str, line: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(lines(d, name)[line - 1])
    return data


def set_row(d: Path, name: str, line: int, data: dict[str, Any]) -> None:
    rows = lines(d, name)
    rows[line - 1] = json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n"
    write_lines(d, name, rows)


def fails(d: Path) -> Discrepancy:
    report = verify_export(d)
    assert not report.ok, "the tampered export verified"
    assert report.error is not None
    return report.error


def entry_at(d: Path, index: int) -> Entry:
    return Entry.from_bytes(
        decode_leaf(bytes.fromhex(row(d, "entries.jsonl", index + 1)["leaf"])).entry
    )


def put_entry(d: Path, entry: Entry) -> None:
    set_row(d, "entries.jsonl", entry.seq + 1, {"index": entry.seq, "leaf": leaf_of(entry).hex()})


def find_entry(d: Path, pred: Callable[[Entry], bool], start: int = 0) -> Entry:
    n = len(lines(d, "entries.jsonl"))
    return next(e for e in (entry_at(d, i) for i in range(start, n)) if pred(e))


def flip(data: bytes, pos: int, rng: random.Random) -> bytes:
    out = bytearray(data)
    out[pos] ^= rng.randrange(1, 256)
    return bytes(out)


def names_entry(err: Discrepancy, index: int) -> bool:
    """The failure points at entry `index`: its line, the interval it opened, or a checkpoint
    whose entry range holds it."""
    if err.file == "entries.jsonl":
        if err.line == index + 1:
            return True
        return re.search(rf"opened by entry {index}\)", err.message) is not None
    if err.file == "checkpoints.jsonl" and err.entries is not None:
        lo, hi = err.entries
        return lo <= index <= hi and f"entries {lo}..{hi}" in err.message
    return False


# a good export ---------------------------------------------------------------------------------


def test_sample_export_verifies_and_balances_equal_the_engines(sample: SampleExport) -> None:
    report = verify_export(sample.directory)
    assert report.error is None, str(report.error)
    assert report.ok
    b = sample.builder
    assert (report.records, report.devices, report.checkpoints) == (93, 3, len(b.checkpoints))
    assert report.entries == report.tree_size == len(b.leaves) == len(b.engine.entries)
    assert report.root == b.log.root()
    # the replayed state is the engine's, lot for lot and account for account
    assert report.state is not None
    assert report.state.snapshot() == b.engine.state.snapshot()
    st = b.engine.state
    assert [s.site for s in report.sites] == ["site-a", "site-b"]
    for s in report.sites:
        assert (s.tgen_wh, s.tstorage_wh, s.set_aside_wh, s.balance_minor) == (
            st.tgen_wh(s.site),
            st.tstorage_wh(s.site),
            st.set_aside_wh(s.site),
            st.balance(f"site:{s.site}"),
        )
    assert report.accounts == {a: v for a, v in st.balances.items()}
    assert sum(report.accounts.values()) == 0
    # only the last, still open interval is outside the ledger, and only as a warning
    assert len(report.warnings) == 3
    assert all("not yet in the ledger" in w for w in report.warnings)
    assert all(f"seq {b.devices['pi-1'].device.chain.seq}" in w for w in report.warnings)


def test_sample_export_exercises_rotation_battery_and_market(sample: SampleExport) -> None:
    b = sample.builder
    kinds = {e.kind for e in b.engine.entries}
    assert {
        EntryKind.STORAGE_CHARGE,
        EntryKind.STORAGE_DECAY,
        EntryKind.STORAGE_DISCHARGE_LOAD,
        EntryKind.STORAGE_DISCHARGE_GRID,
        EntryKind.STORAGE_SET_ASIDE,
        EntryKind.P2P_TRADE,
        EntryKind.GRID_SALE,
        EntryKind.GRID_PURCHASE,
        EntryKind.DEPOSIT,
    } <= kinds
    kids = {cose.parse(t.envelope).kid for t in b.tokens if t.record.device_id == "pi-1"}
    assert kids == {cose.key_id(k.public_key) for k in b.devices["pi-1"].keys}
    assert len(kids) == 2


def test_builder_is_reusable_and_chain_anchor_is_a_warning(tmp_path: Path) -> None:
    """A chain first heard of at seq 2 is accepted (as the aggregator's ingest does), flagged."""
    b = LedgerExportBuilder()
    b.add_device("pi-9", "site-z")
    first = b.sign("pi-9", generated=120, imported=5)
    second = b.sign("pi-9", generated=80, exported=10)
    b.tokens.remove(first)
    b.close("site-z", second.record.interval_start)
    b.checkpoint()
    report = verify_export(b.write(tmp_path / "x"))
    assert report.ok, str(report.error)
    assert report.warnings == (
        "records.jsonl line 1 (device pi-9 seq 2): device pi-9's chain starts at seq 2; "
        "earlier records were never accepted",
    )
    assert report.sites[0].tgen_wh == 10  # 80 generated, 70 self-consumed, 10 exported


def test_empty_export_verifies(tmp_path: Path) -> None:
    report = verify_export(LedgerExportBuilder().write(tmp_path / "empty"))
    assert report.ok and report.entries == 0 and report.tree_size == 0


# records ---------------------------------------------------------------------------------------


def test_any_tampered_record_byte_names_that_record(export: Path) -> None:
    rng = random.Random(SEED)
    original = lines(export, "records.jsonl")
    for _ in range(SAMPLES):
        n = rng.randrange(len(original))
        data = json.loads(original[n])
        envelope = bytes.fromhex(data["envelope"])
        data["envelope"] = flip(envelope, rng.randrange(len(envelope)), rng).hex()
        rows = list(original)
        rows[n] = json.dumps(data, sort_keys=True) + "\n"
        write_lines(export, "records.jsonl", rows)
        err = fails(export)
        assert (err.file, err.line) == ("records.jsonl", n + 1), str(err)
        assert err.item == f"device {data['device_id']} seq {data['seq']}"
        assert str(err).startswith(f"records.jsonl line {n + 1} (device {data['device_id']} seq ")


def test_record_hash_token_id_and_seq_must_be_the_records(export: Path) -> None:
    good = row(export, "records.jsonl", 5)
    for field, value, says in (
        ("record_hash", "ab" * 32, "is not the SHA-256 of the envelope"),
        ("token_id", "cd" * 32, "is not the record's token id"),
        ("seq", 77, "the signed record has seq 5"),
    ):
        set_row(export, "records.jsonl", 5, {**good, field: value})
        err = fails(export)
        assert (err.file, err.line) == ("records.jsonl", 5) and says in err.message, str(err)
    set_row(export, "records.jsonl", 5, good)
    assert verify_export(export).ok


def test_deleting_a_record_breaks_its_chain(export: Path) -> None:
    rows = lines(export, "records.jsonl")
    assert row(export, "records.jsonl", 40)["device_id"] == "pi-2"
    write_lines(export, "records.jsonl", rows[:39] + rows[40:])  # pi-2 seq 9
    err = fails(export)
    assert str(err) == (
        "records.jsonl line 40 (device pi-2 seq 10): chain gap: seq 9 missing after seq 8 (line 39)"
    )


def test_deleting_a_chains_first_record_leaves_its_mint_without_evidence(export: Path) -> None:
    rows = lines(export, "records.jsonl")
    gone = json.loads(rows[62])  # pi-3 seq 1
    assert (gone["device_id"], gone["seq"]) == ("pi-3", 1)
    write_lines(export, "records.jsonl", rows[:62] + rows[63:])
    err = fails(export)
    assert err.file == "entries.jsonl"
    assert gone["record_hash"] in err.message and "not in records.jsonl" in err.message
    mint = entry_at(export, err.line - 1 if err.line else -1)
    assert mint.kind is EntryKind.MINT_GEN and mint.refs[0].token_id == gone["token_id"]


def test_deleting_a_record_not_yet_in_the_ledger_only_drops_its_warning(export: Path) -> None:
    rows = lines(export, "records.jsonl")
    write_lines(export, "records.jsonl", rows[:-1])
    report = verify_export(export)
    assert report.ok and len(report.warnings) == 2


def chain_export(tmp_path: Path, name: str, tweak: Callable[[LedgerExportBuilder], None]) -> Path:
    """Records only: pi-9 signs three intervals, `tweak` runs before the third."""
    b = LedgerExportBuilder()
    b.add_device("pi-9", "site-z")
    b.sign("pi-9", generated=10)
    b.sign("pi-9", generated=20)
    tweak(b)
    b.sign("pi-9", generated=30)
    return b.write(tmp_path / name)


def test_chain_links_are_checked(tmp_path: Path) -> None:
    def wrong_prev(b: LedgerExportBuilder) -> None:
        dev = b.devices["pi-9"].device
        dev.chain = dataclasses.replace(dev.chain, prev_hash=b"\x01" * 32)

    def same_interval(b: LedgerExportBuilder) -> None:
        b.devices["pi-9"].device.next_start -= 300

    def restart(b: LedgerExportBuilder) -> None:
        b.devices["pi-9"].device.chain = ChainState(prev_hash=b"\x02" * 32)

    assert verify_export(chain_export(tmp_path, "good", lambda b: None)).ok
    err = fails(chain_export(tmp_path, "prev", wrong_prev))
    assert str(err) == (
        "records.jsonl line 3 (device pi-9 seq 3): prev hash is not the hash of seq 2 (line 2)"
    )
    err = fails(chain_export(tmp_path, "twice", same_interval))
    assert str(err) == (
        f"records.jsonl line 3 (device pi-9 seq 3): interval {T0 + 300} is already signed on line 2"
    )
    err = fails(chain_export(tmp_path, "restart", restart))  # a second chain from seq 1
    assert (
        str(err) == "records.jsonl line 2 (device pi-9 seq 1): seq 1 does not follow seq 1 (line 1)"
    )
    b = LedgerExportBuilder()
    b.add_device("pi-9", "site-z")
    restart(b)
    b.sign("pi-9", generated=10)
    assert str(fails(b.write(tmp_path / "first"))) == (
        "records.jsonl line 1 (device pi-9 seq 1): the chain's first record (seq 1) must carry "
        "the zero hash"
    )
    d = chain_export(tmp_path, "order", lambda b: None)
    rows = lines(d, "records.jsonl")
    write_lines(d, "records.jsonl", [rows[1], rows[0], rows[2]])
    assert str(fails(d)).startswith(
        "records.jsonl line 2 (device pi-9 seq 1): seq 1 does not follow seq 2 (line 1)"
    )


def test_record_signed_by_a_retired_key_names_the_record(
    export: Path, sample: SampleExport
) -> None:
    pi1 = row(export, "devices.jsonl", 1)
    assert pi1["device_id"] == "pi-1" and pi1["keys"][0]["valid_until"] is not None
    pi1["keys"][0]["valid_until"] = T0 + 10 * 300  # retire the old key earlier than it was
    set_row(export, "devices.jsonl", 1, pi1)
    err = fails(export)
    # interval 10 ends at T0 + 3300, after the key retired: that is pi-1's record seq 11
    assert (err.file, err.line, err.item) == ("records.jsonl", 11, "device pi-1 seq 11")
    assert f"was retired at {T0 + 3000}" in err.message


def test_record_signed_by_another_devices_key(export: Path) -> None:
    devices = [row(export, "devices.jsonl", n) for n in (1, 2, 3)]
    devices[2]["keys"] = devices[1]["keys"]  # pi-3 claims pi-2's key
    set_row(export, "devices.jsonl", 3, devices[2])
    err = fails(export)
    assert (err.file, err.line) == ("devices.jsonl", 3) and "already a key of device pi-2" in str(
        err
    )


def test_wrong_deployment_fails_the_first_signature(export: Path) -> None:
    log = json.loads((export / "log.json").read_text())
    (export / "log.json").write_text(json.dumps({**log, "deployment": "gridmint-prod"}))
    err = fails(export)
    assert (err.file, err.line) == ("records.jsonl", 1)
    assert "signature does not verify" in err.message


# entries ---------------------------------------------------------------------------------------


def test_any_tampered_leaf_byte_names_that_entry_or_its_checkpoint_range(export: Path) -> None:
    rng = random.Random(SEED)
    original = lines(export, "entries.jsonl")
    by: dict[str, int] = {}
    for _ in range(SAMPLES):
        n = rng.randrange(len(original))
        data = json.loads(original[n])
        leaf = bytes.fromhex(data["leaf"])
        data["leaf"] = flip(leaf, rng.randrange(len(leaf)), rng).hex()
        rows = list(original)
        rows[n] = json.dumps(data, sort_keys=True) + "\n"
        write_lines(export, "entries.jsonl", rows)
        err = fails(export)
        assert names_entry(err, n), f"entry {n} tampered, but: {err}"
        by[err.file] = by.get(err.file, 0) + 1
    assert by.get("entries.jsonl", 0) > 0  # most byte changes break the entry itself


def test_a_valid_but_different_entry_breaks_the_checkpoint_root(export: Path) -> None:
    """Change what no ledger rule looks at (the trade's reference): only the log can tell."""
    trade = find_entry(export, lambda e: e.kind is EntryKind.P2P_TRADE)
    put_entry(export, dataclasses.replace(trade, ref="trade-forged"))
    err = fails(export)
    sizes = [int(json.loads(r)["note"].split("\n")[1]) for r in lines(export, "checkpoints.jsonl")]
    last = len(sizes)
    assert (err.file, err.line, err.item) == ("checkpoints.jsonl", last, f"size {sizes[-1]}")
    assert err.message == f"root does not match entries {sizes[-2]}..{sizes[-1] - 1}"
    assert err.entries is not None and err.entries[0] <= trade.seq <= err.entries[1]


def test_deleting_an_entry_line(export: Path) -> None:
    rows = lines(export, "entries.jsonl")
    write_lines(export, "entries.jsonl", rows[:100] + rows[101:])
    assert str(fails(export)) == (
        "entries.jsonl line 101: holds index 101 where entry 100 belongs "
        "(entries missing or out of order)"
    )
    write_lines(export, "entries.jsonl", rows[:-1])
    err = fails(export)
    assert (err.file, err.line) == ("checkpoints.jsonl", len(lines(export, "checkpoints.jsonl")))
    assert err.message == f"covers {len(rows)} entries, but entries.jsonl holds {len(rows) - 1}"


def test_swapping_two_entry_lines(export: Path) -> None:
    rows = lines(export, "entries.jsonl")
    rows[50], rows[51] = rows[51], rows[50]
    write_lines(export, "entries.jsonl", rows)
    err = fails(export)
    assert (err.file, err.line) == ("entries.jsonl", 51)
    # renumbering the indexes does not help: the leaf carries its own seq
    for n in (50, 51):
        data = json.loads(rows[n])
        data["index"] = n
        rows[n] = json.dumps(data) + "\n"
    write_lines(export, "entries.jsonl", rows)
    assert str(fails(export)) == "entries.jsonl line 51 (entry 50): leaf seq 51 is not its index 50"


def test_double_mint_of_a_record(export: Path) -> None:
    first = find_entry(export, lambda e: e.kind is EntryKind.MINT_GEN and e.site == "site-b")
    later = find_entry(
        export, lambda e: e.kind is EntryKind.MINT_GEN and e.site == "site-b", first.seq + 1
    )
    put_entry(export, dataclasses.replace(later, refs=first.refs))
    err = fails(export)
    assert (err.file, err.line) == ("entries.jsonl", later.seq + 1)
    assert f"double mint: ref 0 (token {first.refs[0].token_id})" in err.message
    assert f"already by entry {first.seq}" in err.message


def test_mint_measurement_must_be_the_sum_of_its_records(export: Path) -> None:
    mint = find_entry(export, lambda e: e.kind is EntryKind.MINT_GEN and e.site == "site-a")
    assert mint.measurement is not None
    m = dataclasses.replace(mint.measurement, imported_wh=mint.measurement.imported_wh + 7)
    put_entry(export, dataclasses.replace(mint, measurement=m))
    err = fails(export)
    assert (err.file, err.line) == ("entries.jsonl", mint.seq + 1)
    assert f"measurement says imported {m.imported_wh} Wh" in err.message


def test_minted_records_must_belong_to_the_entrys_site(export: Path) -> None:
    pi3 = row(export, "devices.jsonl", 3)
    set_row(export, "devices.jsonl", 3, {**pi3, "site_id": "site-a"})
    err = fails(export)
    assert err.file == "entries.jsonl"
    assert "device pi-3 belongs to site site-a, not site-b" in err.message


def test_leaf_record_hashes_must_be_the_entry_refs(export: Path) -> None:
    mint = find_entry(export, lambda e: e.kind is EntryKind.MINT_GEN)
    leaf = LedgerLeaf(mint.seq, (bytes(32),) * len(mint.refs), mint.to_bytes()).encode()
    set_row(export, "entries.jsonl", mint.seq + 1, {"index": mint.seq, "leaf": leaf.hex()})
    err = fails(export)
    assert (err.file, err.line) == ("entries.jsonl", mint.seq + 1)
    assert "record hashes are not those of the entry's record refs" in err.message


def test_burning_a_spent_lot_is_reported_by_replay(export: Path) -> None:
    sale = find_entry(export, lambda e: e.kind is EntryKind.GRID_SALE)
    again = find_entry(
        export, lambda e: e.kind is EntryKind.GRID_SALE and e.site == sale.site, sale.seq + 1
    )
    lot = sale.burns[0].lot_id
    put_entry(export, dataclasses.replace(again, burns=(Burn(lot, again.burned_wh),)))
    err = fails(export)
    assert (err.file, err.line) == ("entries.jsonl", again.seq + 1)
    assert err.item == f"entry {again.seq}, GRID_SALE {sale.site}"
    assert f"double spend: lot {lot} has 0 Wh left" in err.message


def test_interval_rule_failure_names_the_entry_that_opened_the_interval(export: Path) -> None:
    mint = find_entry(
        export,
        lambda e: (
            e.kind is EntryKind.MINT_GEN
            and e.measurement is not None
            and e.measurement.capacity_wh > 0
        ),
    )
    assert mint.measurement is not None
    m = dataclasses.replace(mint.measurement, capacity_wh=mint.measurement.capacity_wh + 4000)
    put_entry(export, dataclasses.replace(mint, measurement=m))
    err = fails(export)
    assert err.file == "entries.jsonl" and names_entry(err, mint.seq), str(err)
    assert err.entries is not None and err.entries[0] == mint.seq


# checkpoints -----------------------------------------------------------------------------------


def test_any_tampered_checkpoint_byte_names_that_checkpoint(export: Path) -> None:
    rng = random.Random(SEED)
    original = lines(export, "checkpoints.jsonl")
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/= .\n"
    for _ in range(SAMPLES):
        n = rng.randrange(len(original))
        note = json.loads(original[n])["note"]
        pos = rng.randrange(len(note))
        new = rng.choice([c for c in alphabet if c != note[pos]])
        rows = list(original)
        rows[n] = json.dumps({"note": note[:pos] + new + note[pos + 1 :]}) + "\n"
        write_lines(export, "checkpoints.jsonl", rows)
        err = fails(export)
        assert (err.file, err.line) == ("checkpoints.jsonl", n + 1), str(err)


def test_checkpoints_must_not_shrink_and_must_cover_every_entry(export: Path) -> None:
    rows = lines(export, "checkpoints.jsonl")
    swapped = list(rows)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    write_lines(export, "checkpoints.jsonl", swapped)
    err = fails(export)
    assert (err.file, err.line) == ("checkpoints.jsonl", 5) and "size decreases" in err.message
    write_lines(export, "checkpoints.jsonl", rows[:-1])
    err = fails(export)
    assert err.file == "checkpoints.jsonl" and "are not covered by any checkpoint" in err.message
    write_lines(export, "checkpoints.jsonl", [])
    assert "are not covered by any checkpoint" in fails(export).message


def test_checkpoint_of_another_log_or_key(export: Path, sample: SampleExport) -> None:
    b = sample.builder
    other = sign_checkpoint(Checkpoint("other.example/log", 3, b.log.root(3)), ORIGIN, b.log_key)
    rows = lines(export, "checkpoints.jsonl")
    write_lines(export, "checkpoints.jsonl", [json.dumps({"note": other.decode()}) + "\n", *rows])
    err = fails(export)
    assert (err.file, err.line, err.item) == ("checkpoints.jsonl", 1, "size 3")
    assert "checkpoint is for log 'other.example/log'" in err.message
    write_lines(export, "checkpoints.jsonl", rows)
    log = json.loads((export / "log.json").read_text())
    stranger = cose.public_bytes(Ed25519PrivateKey.generate().public_key())
    log["log_key"] = verifier_key_string(ORIGIN, stranger)
    (export / "log.json").write_text(json.dumps(log))
    err = fails(export)
    assert (err.file, err.line) == ("checkpoints.jsonl", 1) and "no signature by the key" in str(
        err
    )


# files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "line", "field"),
    [
        ("records.jsonl", 7, "envelope"),
        ("records.jsonl", 8, "record_hash"),
        ("entries.jsonl", 9, "leaf"),
        ("devices.jsonl", 2, "keys"),
    ],
)
def test_uppercase_hex_is_refused(export: Path, name: str, line: int, field: str) -> None:
    data = row(export, name, line)
    if field == "keys":
        data["keys"][0]["public_key"] = data["keys"][0]["public_key"].upper()
    else:
        data[field] = data[field].upper()
    set_row(export, name, line, data)
    err = fails(export)
    assert (err.file, err.line) == (name, line)
    assert "uppercase hex" in err.message


def test_non_hex_and_odd_length_are_refused(export: Path) -> None:
    data = row(export, "entries.jsonl", 3)
    set_row(export, "entries.jsonl", 3, {**data, "leaf": data["leaf"][:-1]})
    assert (
        str(fails(export)) == "entries.jsonl line 3: field leaf is not lowercase hex of whole bytes"
    )
    set_row(export, "entries.jsonl", 3, {**data, "leaf": "zz" + data["leaf"][2:]})
    assert "not lowercase hex" in fails(export).message


def test_truncated_files(export: Path) -> None:
    text = (export / "records.jsonl").read_text()
    (export / "records.jsonl").write_text(text[: len(text) // 2])
    err = fails(export)
    assert err.file == "records.jsonl" and err.line == text[: len(text) // 2].count("\n") + 1
    assert "truncated" in err.message
    (export / "records.jsonl").write_text(text)
    (export / "log.json").write_text((export / "log.json").read_text()[:40])
    err = fails(export)
    assert err.file == "log.json" and "not valid JSON" in err.message
    assert "Traceback" not in str(err)


def test_unknown_format_version(export: Path) -> None:
    log = json.loads((export / "log.json").read_text())
    (export / "log.json").write_text(json.dumps({**log, "format": "gridmint-export/v2"}))
    assert str(fails(export)) == (
        "log.json: unknown export format 'gridmint-export/v2' "
        "(this verifier reads gridmint-export/v1)"
    )


@pytest.mark.parametrize(
    ("mutate", "says"),
    [
        (
            lambda d: (d / "checkpoints.jsonl").unlink(),
            "checkpoints.jsonl: missing from the export",
        ),
        (lambda d: (d / "devices.jsonl").write_bytes(b"\xff\n"), "devices.jsonl: is not UTF-8"),
        (
            lambda d: (d / "entries.jsonl").write_text('{"index":0}\n'),
            "entries.jsonl line 1: missing field(s) leaf",
        ),
        (
            lambda d: (d / "entries.jsonl").write_text('{"index":0,"index":1,"leaf":"00"}\n'),
            "entries.jsonl line 1: not valid JSON: field 'index' appears twice",
        ),
        (
            lambda d: (d / "entries.jsonl").write_text('{"index":0.0,"leaf":"00"}\n'),
            "entries.jsonl line 1: field index must be an unsigned integer",
        ),
        (
            lambda d: (d / "records.jsonl").write_text("\n"),
            "records.jsonl line 1: blank line",
        ),
    ],
)
def test_malformed_files_give_a_plain_message(
    export: Path, mutate: Callable[[Path], object], says: str
) -> None:
    mutate(export)
    assert str(fails(export)).startswith(says)


def test_not_a_directory(tmp_path: Path) -> None:
    report = verify_export(tmp_path / "nowhere")
    assert isinstance(report, VerifyReport) and not report.ok
    assert str(report.error).endswith("nowhere: is not a directory")


# command line ----------------------------------------------------------------------------------


def test_cli_good_export_prints_summary(sample: SampleExport) -> None:
    result = CliRunner().invoke(app, ["verify", str(sample.directory)])
    assert result.exit_code == 0, result.output
    assert "verified" in result.stdout and "93 records from 3 devices" in result.stdout
    assert "site-a" in result.stdout and "Tstorage Wh" in result.stdout
    tstorage = sample.builder.engine.state.tstorage_wh("site-a")
    assert str(tstorage) in result.stdout
    assert result.stderr.count("not yet in the ledger") == 3


def test_cli_bad_export_prints_one_plain_line(export: Path) -> None:
    data = row(export, "records.jsonl", 17)
    envelope = bytearray(bytes.fromhex(data["envelope"]))
    envelope[-1] ^= 1  # the signature's last byte
    set_row(export, "records.jsonl", 17, {**data, "envelope": envelope.hex()})
    result = CliRunner().invoke(app, ["verify", str(export)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"verification FAILED: records.jsonl line 17 (device {data['device_id']} seq "
        f"{data['seq']}): signature does not verify (key "
        f"{cose.parse(bytes(envelope)).kid.hex()}, deployment 'gridmint-test')\n"
    )
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_cli_json(sample: SampleExport, export: Path) -> None:
    result = CliRunner().invoke(app, ["verify", "--json", str(sample.directory)])
    assert result.exit_code == 0
    out = json.loads(result.stdout)
    assert out["ok"] is True and out["error"] is None and len(out["warnings"]) == 3
    st = sample.builder.engine.state
    assert out["balances"]["sites"]["site-a"] == {
        "tgen_wh": st.tgen_wh("site-a"),
        "tstorage_wh": st.tstorage_wh("site-a"),
        "set_aside_wh": st.set_aside_wh("site-a"),
        "balance_minor": st.balance("site:site-a"),
    }
    assert out["balances"]["accounts"] == st.balances
    (export / "log.json").write_text("{}")
    result = CliRunner().invoke(app, ["verify", "--json", str(export)])
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert out["ok"] is False and out["error"].startswith("log.json: unknown export format None")
    assert out["location"]["file"] == "log.json"


def test_verifier_needs_no_aggregator_code() -> None:
    """Anyone can run it: importing it loads no storage, service, API or database code."""
    probe = (
        "import sys, gridmint.verify\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'fastapi') "
        "or m.startswith(('cloud.storage', 'cloud.services', 'cloud.api', 'edge')))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "[]"
