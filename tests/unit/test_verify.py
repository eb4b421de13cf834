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

import gridmint.verify
from edge.minting import ChainState
from gridmint.cli import app
from gridmint.verify import Discrepancy, MarketSummary, VerifyReport, verify_export
from protocol import cose
from protocol.checkpoint import Checkpoint, sign_checkpoint, verifier_key_string
from protocol.ledger_leaf import LedgerLeaf, decode_leaf
from rules.ledger import Burn, Entry, EntryKind
from rules.market import CloseGate, MatchingMode, Place, Side, TimeInForce, Trade
from rules.market import replay as market_replay
from rules.market.codec import decode_event, decode_trade, encode_event, encode_trade
from tests.helpers.ledger_export import (
    ORIGIN,
    T0,
    LedgerExportBuilder,
    MarketExport,
    SampleExport,
    build_market_export,
    build_sample_export,
    leaf_of,
    read_entries,
    rewrite_log,
    with_market,
    without_entry,
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


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> MarketExport:
    """The market scenario (continuous matching): order events, trades, settlements."""
    return build_market_export(tmp_path_factory.mktemp("market") / "export")


@pytest.fixture
def mexport(market: MarketExport, tmp_path: Path) -> Path:
    """A private copy of the market export."""
    return Path(shutil.copytree(market.directory, tmp_path / "market"))


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


# the market ------------------------------------------------------------------------------------


def names_market_entry(err: Discrepancy, index: int) -> bool:
    """The failure is at entry `index` (or its checkpoint range), or at a later market entry
    whose message names it: a changed order event surfaces at the trade or event it changed."""
    if names_entry(err, index):
        return True
    return (
        err.file == "entries.jsonl"
        and err.entries is not None
        and err.entries[0] <= index <= err.entries[1]
        and f"entry {index})" in err.message
    )


def forged(d: Path, m: MarketExport, entries: list[Entry]) -> Discrepancy:
    """Write `entries` as the log with a re-signed checkpoint for every size: only the market
    replay can tell what changed."""
    rewrite_log(d, entries, m.builder.log_key)
    return fails(d)


def without_market_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gridmint.verify, "_check_market", lambda *a: MarketSummary())


def market_items(entries: list[Entry]) -> tuple[list[Any], list[Trade]]:
    events = [decode_event(e.market) for e in entries if e.kind is EntryKind.ORDER_EVENT]
    trades = [decode_trade(e.market) for e in entries if e.kind is EntryKind.TRADE_MATCH]
    return events, trades


def test_market_export_verifies_and_reports_the_figures(market: MarketExport) -> None:
    report = verify_export(market.directory)
    assert report.ok, str(report.error)
    b = market.builder
    entries = b.engine.entries
    assert report.state is not None and report.state.snapshot() == b.engine.state.snapshot()
    events, trades = market_items(entries)
    assert trades == list(b.matched.values())
    settlements = [e for e in entries if e.kind is EntryKind.P2P_TRADE and e.ref in b.matched]
    assert report.market == MarketSummary(
        mode=MatchingMode.CONTINUOUS,
        mode_from="inferred: trades are caused by orders",
        events=len(events),
        orders=sum(isinstance(ev, Place) for ev in events),
        trades=len(trades),
        traded_wh=sum(t.quantity_wh for t in trades),
        settled_trades=len(settlements),
        settled_wh=sum(e.burned_wh for e in settlements),
    )
    assert report.market_replayed
    # the scenario: trades caused by a Place (two at once) and an Amend, one settled short,
    # one bought from the grid entirely, two matched and not yet settled
    causes = {ev.seq: type(ev).__name__ for ev in events}
    assert {causes[t.taker_seq] for t in trades} == {"Place", "Amend"}
    assert len(settlements) == len(trades) - 3
    assert report.market.settled_wh < sum(b.matched[e.ref].quantity_wh for e in settlements)
    # the one P2P trade the market did not match is a warning, not a failure
    otc = next(e for e in entries if e.ref == "otc-1")
    assert report.warnings == (
        f"entries.jsonl line {otc.seq + 1} (entry {otc.seq}, P2P_TRADE site-a): settles trade "
        "'otc-1', which the market did not match (settled outside the market)",
    )


def test_market_figures_in_the_cli_output(market: MarketExport) -> None:
    report = verify_export(market.directory)
    m = report.market
    result = CliRunner().invoke(app, ["verify", str(market.directory)])
    assert result.exit_code == 0, result.output
    assert f"market replayed: {m.events} events, {m.trades} trades match (continuous" in (
        result.stdout
    )
    assert f"{m.settled_trades} trades settled, {m.settled_wh} Wh)" in result.stdout
    result = CliRunner().invoke(app, ["verify", "--json", str(market.directory)])
    out = json.loads(result.stdout)
    assert out["market"] == m.as_dict()
    assert out["market"]["mode"] == "continuous" and out["market"]["trades"] == m.trades


def test_a_log_without_market_leaves_has_no_market_figures(sample: SampleExport) -> None:
    report = verify_export(sample.directory)
    assert report.ok and report.market == MarketSummary() and not report.market_replayed
    assert report.as_json()["market"]["events"] == 0 and report.as_json()["market"]["mode"] is None
    # its P2P trade (ref "trade-1") was settled outside any market: no warning without one
    assert not any("trade-1" in w for w in report.warnings)
    result = CliRunner().invoke(app, ["verify", str(sample.directory)])
    assert "market replayed" not in result.stdout


def test_call_auction_mode_is_inferred_or_read_from_log_json(tmp_path: Path) -> None:
    m = build_market_export(tmp_path / "auction", mode=MatchingMode.CALL_AUCTION)
    report = verify_export(m.directory)
    assert report.ok, str(report.error)
    assert report.market.mode is MatchingMode.CALL_AUCTION
    assert report.market.mode_from == "inferred: every trade is caused by a gate closure"
    events, trades = market_items(m.builder.engine.entries)
    closes = {ev.seq for ev in events if isinstance(ev, CloseGate)}
    assert trades and all(t.taker_seq in closes for t in trades)
    assert report.market.trades == len(trades) and report.market.settled_trades == len(trades)

    stated = build_market_export(
        tmp_path / "stated", mode=MatchingMode.CALL_AUCTION, state_mode=True
    )
    assert json.loads((stated.directory / "log.json").read_text())["market_mode"] == "call_auction"
    report = verify_export(stated.directory)
    assert report.ok and report.market.mode_from == "log.json"
    # the wrong mode stated: the first crossing order trades at once in continuous matching
    log = json.loads((stated.directory / "log.json").read_text())
    (stated.directory / "log.json").write_text(json.dumps({**log, "market_mode": "continuous"}))
    err = fails(stated.directory)
    b1 = stated.rounds[0].events["place B1"]
    assert (err.file, err.line) == ("entries.jsonl", b1 + 1)
    assert err.item == f"entry {b1}, ORDER_EVENT site-b, trade {b1}.0"
    assert "the replay of this event makes trade" in err.message
    (stated.directory / "log.json").write_text(json.dumps({**log, "market_mode": "fifo"}))
    assert str(fails(stated.directory)) == (
        "log.json: field market_mode must be one of call_auction, continuous"
    )


def test_a_log_without_trades_replays_in_either_mode(tmp_path: Path) -> None:
    """Without trades the mode cannot be inferred: the log passes if it replays in one mode."""
    t = T0 + 3600

    def builder(mode: MatchingMode = MatchingMode.CONTINUOUS) -> LedgerExportBuilder:
        b = LedgerExportBuilder(market_mode=mode)
        b.market("deposit", "site-b", T0, 1_000)  # entry 0 (an event's seq is at least 1)
        return b

    ioc = builder()  # continuous only: a call auction takes no IOC order
    ioc.place("b-1", "site-b", Side.BUY, t, 100, 20, tif=TimeInForce.IOC)
    ioc.checkpoint()
    report = verify_export(ioc.write(tmp_path / "ioc"))
    assert report.ok, str(report.error)
    assert (report.market.mode, report.market.mode_from) == (
        MatchingMode.CONTINUOUS,
        "no trades to infer it from",
    )
    rested = builder(MatchingMode.CALL_AUCTION)  # crossed, then cancelled
    rested.place("s-1", "site-a", Side.SELL, t, 100, 10)
    rested.place("b-1", "site-b", Side.BUY, t, 100, 20)
    rested.cancel("b-1")
    rested.close_gate(t)
    rested.checkpoint()
    report = verify_export(rested.write(tmp_path / "rested"))
    assert report.ok, str(report.error)
    assert report.market.mode is MatchingMode.CALL_AUCTION and report.market.trades == 0
    # a log that replays in neither: an IOC that traded, its trade leaf deleted
    both = builder()
    both.place("s-1", "site-a", Side.SELL, t, 100, 10)
    both.place("b-1", "site-b", Side.BUY, t, 100, 20, tif=TimeInForce.IOC)
    both.checkpoint()
    d = both.write(tmp_path / "both")
    assert both.engine.entries[3].kind is EntryKind.TRADE_MATCH
    rewrite_log(d, without_entry(both.engine.entries, 3), both.log_key)
    err = fails(d)
    assert (err.file, err.line, err.item) == (
        "entries.jsonl",
        3,
        "entry 2, ORDER_EVENT site-b, trade 2.0",
    )
    assert err.message.endswith(
        "(replayed in continuous matching; the log has no trades and states no mode, and "
        "call_auction matching fails too)"
    )


def test_any_flipped_market_byte_names_its_entry_or_checkpoint_range(
    mexport: Path, market: MarketExport
) -> None:
    """A raw byte flip inside an order event or a trade: the codec, the replay or the
    checkpoint root finds it, and names the entry (or the trade it changed)."""
    rng = random.Random(SEED)
    original = lines(mexport, "entries.jsonl")
    leaves = [e for e in market.builder.engine.entries if e.market]
    by: dict[str, int] = {}
    for _ in range(SAMPLES):
        e = rng.choice(leaves)
        data = json.loads(original[e.seq])
        leaf = bytes.fromhex(data["leaf"])
        start = leaf.find(e.market)
        assert start > 0
        data["leaf"] = flip(leaf, start + rng.randrange(len(e.market)), rng).hex()
        rows = list(original)
        rows[e.seq] = json.dumps(data, sort_keys=True) + "\n"
        write_lines(mexport, "entries.jsonl", rows)
        err = fails(mexport)
        assert names_market_entry(err, e.seq), f"entry {e.seq} flipped, but: {err}"
        by[err.file] = by.get(err.file, 0) + 1
    assert by.get("entries.jsonl", 0) > SAMPLES // 2  # the market check finds most first


def test_a_flipped_byte_the_market_accepts_breaks_the_checkpoint_root(
    mexport: Path, market: MarketExport
) -> None:
    """The order's source ("manual") is in no trade: the replay cannot tell, the root can."""
    a1 = market.rounds[0].events["place A1"]
    data = row(mexport, "entries.jsonl", a1 + 1)
    leaf = bytearray(bytes.fromhex(data["leaf"]))
    leaf[bytes(leaf).index(b"manual") + 5] ^= 0x20  # "manuaL"
    set_row(mexport, "entries.jsonl", a1 + 1, {**data, "leaf": bytes(leaf).hex()})
    event = decode_event(entry_at(mexport, a1).market)
    assert isinstance(event, Place) and event.source == "manuaL"
    err = fails(mexport)
    assert err.file == "checkpoints.jsonl" and names_entry(err, a1), str(err)


def test_a_re_signed_changed_order_event_is_caught_by_the_replay(
    mexport: Path, market: MarketExport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A1 offered at 21 instead of 18, the leaf re-encoded and every checkpoint re-signed:
    B1 (a bid at 20) no longer takes it, so the logged trade is one the replay does not make."""
    r = market.rounds[0]
    a1, b1 = r.events["place A1"], r.events["place B1"]
    entries = read_entries(mexport)
    event = decode_event(entries[a1].market)
    assert isinstance(event, Place)
    entries[a1] = with_market(entries[a1], dataclasses.replace(event, limit_price=21))
    err = forged(mexport, market, entries)
    assert (err.file, err.line) == ("entries.jsonl", b1 + 3)
    assert err.item == f"entry {b1 + 2}, TRADE_MATCH site-a, trade {b1}.1"
    assert err.message == (
        f"extra trade: trade {b1}.1 (150 Wh at 18/kWh from site-a to site-b, orders "
        f"A1-1/B1-1) is not made by the replay of entry {b1}; orders A1-1 (placed at entry "
        f"{a1}), B1-1 (placed at entry {b1})"
    )
    assert err.entries == (a1, b1 + 2) and names_market_entry(err, a1)
    without_market_check(monkeypatch)  # the forgery is otherwise perfect
    assert verify_export(mexport).ok


def test_any_re_signed_change_to_an_order_event_that_changes_the_market_is_found(
    mexport: Path, market: MarketExport
) -> None:
    """Random changes to placed orders' terms, re-encoded and re-signed: verify fails, no
    earlier than the changed entry, exactly when the changed events no longer replay to the
    logged trades; a change without consequence is a consistent history and verifies."""
    rng = random.Random(SEED)
    entries = read_entries(mexport)
    places = [
        e
        for e in entries
        if e.kind is EntryKind.ORDER_EVENT and isinstance(decode_event(e.market), Place)
    ]
    logged = market_items(entries)[1]
    outcome = {"caught": 0, "consistent": 0}
    for _ in range(SAMPLES):
        e = rng.choice(places)
        ev = decode_event(e.market)
        assert isinstance(ev, Place)
        change = rng.choice(["price", "quantity"])
        if change == "price":
            new = dataclasses.replace(
                ev, limit_price=max(0, ev.limit_price + rng.choice([-3, -1, 1, 4]))
            )
        else:
            new = dataclasses.replace(
                ev, quantity_wh=max(1, ev.quantity_wh + rng.choice([-120, -30, 25, 90]))
            )
        if new == ev:
            continue
        changed = list(entries)
        changed[e.seq] = with_market(e, new)
        events = market_items(changed)[0]
        try:
            consistent = market_replay(events)[0] == logged
        except ValueError:
            consistent = False
        rewrite_log(mexport, changed, market.builder.log_key)
        report = verify_export(mexport)
        if consistent:
            assert report.ok, f"{new} replays to the logged trades, but: {report.error}"
            outcome["consistent"] += 1
            continue
        err = report.error
        assert err is not None, f"{new} changes the trades, and verified"
        assert err.file == "entries.jsonl" and err.line is not None and err.line > e.seq, str(err)
        outcome["caught"] += 1
    assert outcome["caught"] >= SAMPLES // 4 and outcome["consistent"] > 0, outcome


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda t: t._replace(quantity_wh=t.quantity_wh + 1), "quantity_wh 151 (the replay: 150)"),
        (lambda t: t._replace(price=t.price + 1), "price 19 (the replay: 18)"),
        (
            lambda t: t._replace(buyer_site_id="site-c"),
            "buyer_site_id 'site-c' (the replay: 'site-b')",
        ),
    ],
)
def test_a_re_signed_changed_trade_is_named(
    mexport: Path, market: MarketExport, change: Callable[[Trade], Trade], says: str
) -> None:
    b1 = market.rounds[0].events["place B1"]
    entries = read_entries(mexport)
    at = b1 + 2
    trade = decode_trade(entries[at].market)
    assert trade.trade_id == f"{b1}.1"
    changed = with_market(entries[at], change(trade))
    entries[at] = dataclasses.replace(changed, counterparty=change(trade).buyer_site_id)
    err = forged(mexport, market, entries)
    assert (err.file, err.line) == ("entries.jsonl", at + 1)
    assert err.item == f"entry {at}, TRADE_MATCH site-a, trade {b1}.1"
    assert err.message.startswith(f"trade {b1}.1 differs from the replay: {says}; orders ")


def test_a_trade_leaf_must_agree_with_its_trade(mexport: Path, market: MarketExport) -> None:
    b1 = market.rounds[0].events["place B1"]
    entries = read_entries(mexport)
    at = b1 + 2
    e = entries[at]
    for entry, says in (
        (
            dataclasses.replace(e, requested_wh=140),
            "the entry's requested Wh is 140, the trade's 150",
        ),
        (
            dataclasses.replace(e, counterparty="site-c"),
            "the entry's counterparty is 'site-c', the trade's 'site-b'",
        ),
        (
            dataclasses.replace(e, ref="forged"),
            f"the entry's ref is 'forged', the trade's '{b1}.1'",
        ),
        (
            dataclasses.replace(e, site="site-c"),
            "the entry's site is 'site-c', the trade's 'site-a'",
        ),
    ):
        changed = list(entries)
        changed[at] = entry
        err = forged(mexport, market, changed)
        assert (err.file, err.line, err.message) == ("entries.jsonl", at + 1, says), str(err)


def test_an_order_event_leaf_must_agree_with_its_event(mexport: Path, market: MarketExport) -> None:
    r = market.rounds[0]
    a1, amend, close = r.events["place A1"], r.events["amend A1"], r.events["close"]
    entries = read_entries(mexport)
    event = decode_event(entries[a1].market)
    for at, entry, says in (
        (
            a1,
            with_market(entries[a1], dataclasses.replace(event, seq=a1 + 1)),
            f"order event seq {a1 + 1} is not its entry seq {a1}",
        ),
        (
            a1,
            dataclasses.replace(entries[a1], site="site-b"),
            f"the entry is for site site-b interval {r.interval_start}, its Place for site "
            f"site-a interval {r.interval_start}",
        ),
        (
            amend,
            dataclasses.replace(entries[amend], interval_start=r.interval_start + 300),
            f"the entry is for site site-a interval {r.interval_start + 300}, its order A1-1 "
            f"for site site-a interval {r.interval_start}",
        ),
        (
            close,
            dataclasses.replace(entries[close], site="site-a"),
            f"the entry is for site site-a interval {r.interval_start}, its CloseGate for site "
            f"market interval {r.interval_start}",
        ),
        (
            a1,
            dataclasses.replace(entries[a1], ref="x"),
            "an ORDER_EVENT carries no counterparty, ref or requested Wh",
        ),
        (
            a1,
            dataclasses.replace(entries[a1], market=b"\xa0"),
            "order event: not a version 1 market item",
        ),
    ):
        changed = list(entries)
        changed[at] = entry
        err = forged(mexport, market, changed)
        assert (err.file, err.line, err.message) == ("entries.jsonl", at + 1, says), str(err)


def test_deleting_a_trade_leaf_names_the_trade(mexport: Path, market: MarketExport) -> None:
    r = market.rounds[0]
    b1 = r.events["place B1"]
    rows = lines(mexport, "entries.jsonl")
    write_lines(mexport, "entries.jsonl", rows[: b1 + 2] + rows[b1 + 3 :])
    assert str(fails(mexport)) == (
        f"entries.jsonl line {b1 + 3}: holds index {b1 + 3} where entry {b1 + 2} belongs "
        "(entries missing or out of order)"
    )
    # the forger renumbers what follows and re-signs: the replay still makes the trade
    err = forged(mexport, market, without_entry(market.builder.engine.entries, b1 + 2))
    assert (err.file, err.line) == ("entries.jsonl", b1 + 1)
    assert err.item == f"entry {b1}, ORDER_EVENT site-b, trade {b1}.1"
    assert err.message.startswith(
        f"the replay of this event makes trade {b1}.1 (150 Wh at 18/kWh from site-a to site-b, "
        f"orders A1-1/B1-1), but no TRADE_MATCH leaf for it follows before entry {b1 + 2}"
    )
    # every trade leaf of the log, deleted in turn
    for e in market.builder.engine.entries:
        if e.kind is EntryKind.TRADE_MATCH:
            err = forged(mexport, market, without_entry(market.builder.engine.entries, e.seq))
            assert err.file == "entries.jsonl" and f"trade {e.ref}" in str(err), (e.ref, str(err))


def test_reordering_trade_leaves_names_the_trade(mexport: Path, market: MarketExport) -> None:
    b1 = market.rounds[0].events["place B1"]
    entries = read_entries(mexport)
    first, second = entries[b1 + 1], entries[b1 + 2]
    entries[b1 + 1] = dataclasses.replace(second, seq=first.seq)
    entries[b1 + 2] = dataclasses.replace(first, seq=second.seq)
    err = forged(mexport, market, entries)
    assert (err.file, err.line, err.item) == (
        "entries.jsonl",
        b1 + 2,
        f"entry {b1 + 1}, TRADE_MATCH site-a, trade {b1}.1",
    )
    assert err.message.startswith(
        f"trade {b1}.1 is out of order: the replay makes trade {b1}.0 (100 Wh at 16/kWh from "
        "site-c to site-b, orders C1-1/B1-1) here"
    )


def test_a_trade_leaf_must_follow_its_event_at_once(tmp_path: Path) -> None:
    """The aggregator logs an event and its trades in one append: nothing comes between."""
    t = T0 + 3600
    b = LedgerExportBuilder()
    b.market("deposit", "site-b", T0, 1_000)
    b.place("s-1", "site-a", Side.SELL, t, 100, 10)
    bid = Place(2, "b-1", "acct-site-b", "site-b", Side.BUY, t, 100, 20)
    (trade,) = b.exchange.apply(bid)
    b.engine.record_market(EntryKind.ORDER_EVENT, "site-b", t, encode_event(bid))
    b.market("deposit", "site-b", T0, 5)  # entry 3, between the bid and its trade
    b.market(
        "record_market",
        EntryKind.TRADE_MATCH,
        "site-a",
        t,
        encode_trade(trade),
        counterparty="site-b",
        ref=trade.trade_id,
        requested_wh=trade.quantity_wh,
    )
    b.checkpoint()
    assert str(fails(b.write(tmp_path / "between"))) == (
        "entries.jsonl line 5 (entry 4, TRADE_MATCH site-a, trade 2.0): trade 2.0 does not come "
        "right after the event that caused it (entry 2) and the trades before it: entry 3 lies "
        "between"
    )


def test_deleting_an_order_event(mexport: Path, market: MarketExport) -> None:
    """Every order event deleted in turn (renumbered, re-signed): found, at or after it, unless
    the event changed no trade (a cancelled order that would have expired anyway, an IOC that
    found nothing): the log without it is a consistent history, and verifies."""
    r = market.rounds[0]
    rows = lines(mexport, "entries.jsonl")
    write_lines(
        mexport, "entries.jsonl", rows[: r.events["cancel C2"]] + rows[r.events["cancel C2"] + 1 :]
    )
    assert "(entries missing or out of order)" in fails(mexport).message
    entries = market.builder.engine.entries
    harmless = {
        x.events[k] for x in market.rounds for k in ("cancel C2", "place B3") if k in x.events
    }
    passed = set()
    for e in entries:
        if e.kind is not EntryKind.ORDER_EVENT:
            continue
        rewrite_log(mexport, without_entry(entries, e.seq), market.builder.log_key)
        report = verify_export(mexport)
        if report.ok:
            passed.add(e.seq)
            continue
        err = report.error
        assert err is not None and err.file == "entries.jsonl", str(err)
        assert err.line is not None and err.line > e.seq, (e.seq, str(err))
    assert passed == harmless
    # the gate closure of a settled interval: its settlements come while the gate is open
    close = r.events["close"]
    err = forged(mexport, market, without_entry(entries, close))
    trade = r.trades[0]
    assert err.item is not None and err.item.endswith(f"P2P_TRADE site-c, trade {trade.trade_id}")
    assert err.message == (
        f"settles trade {trade.trade_id} (matched at entry {trade.taker_seq + 1}) while the gate "
        f"of its interval {r.interval_start} is still open (no gate closure in the log)"
    )


@pytest.mark.parametrize(
    ("forge", "says"),
    [
        ({"price": 17}, "with price 17, the trade's is 18"),
        ({"quantity_wh": 140}, "with traded Wh 140, the trade's is 150"),
        ({"buyer": "site-c"}, "with buyer 'site-c', the trade's is 'site-b'"),
    ],
)
def test_a_settlement_must_settle_its_matched_trade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forge: dict[str, Any], says: str
) -> None:
    """The aggregator settles one trade on other terms, in a log it builds and signs itself."""

    def settle(b: LedgerExportBuilder, t: Trade) -> object:
        a1_b1 = (t.sell_order_id, t.buy_order_id) == ("A1-1", "B1-1")  # 150 Wh at 18
        return b.settle(t.trade_id, **(forge if a1_b1 else {}))

    m = build_market_export(tmp_path / "forged", settle=settle)
    target = m.rounds[0].trades[1].trade_id
    (at,) = (
        e.seq for e in m.builder.engine.entries if e.kind is EntryKind.P2P_TRADE and e.ref == target
    )
    matched = next(
        e.seq
        for e in m.builder.engine.entries
        if e.kind is EntryKind.TRADE_MATCH and e.ref == target
    )
    err = fails(m.directory)
    assert (err.file, err.line, err.item) == (
        "entries.jsonl",
        at + 1,
        f"entry {at}, P2P_TRADE site-a, trade {target}",
    )
    assert err.message == f"settles trade {target} (matched at entry {matched}) {says}"
    without_market_check(monkeypatch)  # the ledger rules alone accept it
    assert verify_export(m.directory).ok


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
