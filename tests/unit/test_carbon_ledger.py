"""The carbon shop on the ledger: the CARBON leaves' codec (canonical, strict), the shop rules
rules.carbon's ShopBook replays, and `gridmint verify` on an export holding shop leaves: it
passes and counts them, and a retirement of an unlisted or already retired serial, a retirement
without a paid order, or a listing backed by a token minted to another site is a plain
discrepancy naming the entry."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import cbor2
import pytest

from gridmint.verify import verify_export
from rules.carbon import (
    Backing,
    CarbonCodecError,
    CarbonRuleError,
    ListingWithdrawn,
    LotListed,
    MintedToken,
    OrderPaid,
    PaidLine,
    Retired,
    RetiredSpan,
    ShopBook,
    ShopEvent,
    avoided_kg,
    decode_shop_event,
    encode_shop_event,
    line_price_minor,
)
from rules.ledger import (
    CARBON_SITE,
    GRID_ACCOUNT,
    Entry,
    EntryKind,
    LedgerRuleError,
    Posting,
    replay,
)
from tests.helpers.ledger_export import SampleExport, build_sample_export, read_entries, rewrite_log

H = bytes(range(32))
EXTERNAL = LotListed(1, "lot_a", "prj_1", "forestry", "VCS-9", 1, 1000, 1500, "EUR")
SOLAR = LotListed(
    2,
    "lot_s",
    "prj_gm",
    "gridmint_solar",
    "GC-abc",
    1,
    3,
    9000,
    "EUR",
    certificate_ids=("c" * 64, "e" * 64),
    site_id="site-a",
    g_co2e_per_kwh=707,
    backing=(Backing("t1", H, 0, 2000), Backing("t2", H, 100, 3000)),
)
PAID = OrderPaid(
    3,
    "ord_1",
    "acct-1",
    "EUR",
    line_price_minor(20, 1500) + line_price_minor(3, 9000),
    "pay-1",
    (PaidLine("lot_a", 1, 20, 20, 30), PaidLine("lot_s", 1, 3, 3, 27)),
)
RETIRED = Retired(
    4,
    "ord_1",
    "Alice",
    "offsetting",
    (RetiredSpan("lot_a", 1, 20), RetiredSpan("lot_s", 1, 3)),
    ("c" * 64, "e" * 64),
)
EVENTS: tuple[ShopEvent, ...] = (
    EXTERNAL,
    SOLAR,
    PAID,
    RETIRED,
    ListingWithdrawn(5, "lot_a", "sold elsewhere"),
)


def minted(token: str) -> MintedToken | None:
    return {"t1": MintedToken("site-a", 2500, H, 0), "t2": MintedToken("site-a", 3000, H, 1)}.get(
        token
    )


# codec ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ev", EVENTS, ids=lambda e: type(e).__name__)
def test_events_round_trip_in_canonical_cbor(ev: ShopEvent) -> None:
    data = encode_shop_event(ev)
    assert decode_shop_event(data) == ev
    assert cbor2.dumps(cbor2.loads(data), canonical=True) == data


def test_decoding_refuses_what_is_not_a_canonical_event() -> None:
    data = encode_shop_event(PAID)
    m = cbor2.loads(data)
    with pytest.raises(CarbonCodecError, match="not CBOR"):
        decode_shop_event(b"\xff")
    with pytest.raises(CarbonCodecError, match="keys"):
        decode_shop_event(cbor2.dumps({**m, 9: 1}))
    with pytest.raises(CarbonCodecError, match="unsigned"):
        decode_shop_event(cbor2.dumps({**m, 6: -5}))
    with pytest.raises(CarbonCodecError, match="version"):
        decode_shop_event(cbor2.dumps({**m, 0: 2}))
    with pytest.raises(CarbonCodecError, match="not a shop event"):
        decode_shop_event(cbor2.dumps({**m, 1: 9}))
    # the same map with its keys in another order: not the canonical bytes
    reordered = cbor2.dumps(dict(sorted(m.items(), reverse=True)))
    with pytest.raises(CarbonCodecError, match="canonical"):
        decode_shop_event(reordered)


def test_carbon_leaves_replay_moving_nothing() -> None:
    e = Entry(EntryKind.CARBON, 0, CARBON_SITE, 0, market=encode_shop_event(EXTERNAL), ref="lot_a")
    assert Entry.from_bytes(e.to_bytes()) == e
    state = replay([e])
    assert state.next_seq == 1 and not state.lots and not state.balances
    with pytest.raises(LedgerRuleError, match="without its market bytes"):
        replay([dataclasses.replace(e, market=b"")])
    with pytest.raises(LedgerRuleError, match="moves nothing"):
        replay(
            [
                dataclasses.replace(
                    e, postings=(Posting(GRID_ACCOUNT, debit=5), Posting("site:x", credit=5))
                )
            ]
        )


# the shop's rules ----------------------------------------------------------------------------


def book_after(*events: ShopEvent) -> ShopBook:
    book = ShopBook()
    for n, ev in enumerate(events):
        book.apply(10 + n, ev, minted)
    return book


def test_a_sound_history_replays_and_counts() -> None:
    book = book_after(*EVENTS)
    assert book.kg_listed == 1003 and book.kg_retired == 23
    assert avoided_kg(4900, 707) == 3 and avoided_kg(1414, 707) == 0


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ((EXTERNAL, dataclasses.replace(EXTERNAL, lot_id="lot_b", serial_start=900)), "overlap"),
        (
            (
                EXTERNAL,
                PAID.__class__(
                    3, "ord_1", "b", "EUR", 30, "p", (PaidLine("lot_a", 1, 20, 20, 31),)
                ),
            ),
            "cost 30, not 31",
        ),
        (
            (
                EXTERNAL,
                OrderPaid(3, "ord_1", "b", "EUR", 31, "p", (PaidLine("lot_a", 1, 20, 20, 30),)),
            ),
            "total is 31, its lines sum to 30",
        ),
        (
            (
                EXTERNAL,
                OrderPaid(3, "o", "b", "EUR", 2, "p", (PaidLine("lot_a", 999, 1001, 3, 5),)),
            ),
            "outside lot",
        ),
        ((EXTERNAL, Retired(4, "ord_x", "A", "", (RetiredSpan("lot_a", 1, 2),))), "no paid order"),
        ((EXTERNAL, SOLAR, PAID, RETIRED, RETIRED), "retired twice"),
        (
            (
                EXTERNAL,
                SOLAR,
                PAID,
                dataclasses.replace(
                    RETIRED, spans=(RetiredSpan("lot_a", 1, 5), RetiredSpan("lot_a", 5, 9))
                ),
            ),
            "already retired",
        ),
        (
            (
                EXTERNAL,
                SOLAR,
                PAID,
                dataclasses.replace(RETIRED, spans=(RetiredSpan("lot_z", 1, 5),)),
            ),
            "not listed",
        ),
        (
            (
                EXTERNAL,
                SOLAR,
                PAID,
                dataclasses.replace(
                    RETIRED, spans=(RetiredSpan("lot_a", 15, 25),), certificates=()
                ),
            ),
            "does not cover",
        ),
        ((dataclasses.replace(SOLAR, serial_end=4),), "avoid only 3 kg"),
        ((dataclasses.replace(SOLAR, backing=(Backing("t9", H, 0, 10),)),), "never minted"),
        ((dataclasses.replace(SOLAR, site_id="site-b"),), "minted to site site-a"),
        ((dataclasses.replace(SOLAR, backing=(Backing("t1", H, 0, 2600),)),), "within the 2500 Wh"),
        (
            (
                SOLAR,
                dataclasses.replace(
                    SOLAR, lot_id="lot_t", certificate_ids=("d" * 64,), serial_prefix="GC-d"
                ),
            ),
            "backs two lots beyond its Wh",
        ),
        (
            (SOLAR, dataclasses.replace(SOLAR, lot_id="lot_t", serial_prefix="GC-d")),
            "already listed",
        ),
        (
            (
                EXTERNAL,
                SOLAR,
                PAID,
                dataclasses.replace(RETIRED, spans=(RetiredSpan("lot_a", 1, 20),)),
            ),
            "has 3 kg unretired",
        ),
    ],
)
def test_the_book_refuses_what_the_shop_must_not_do(
    events: tuple[ShopEvent, ...], message: str
) -> None:
    with pytest.raises(CarbonRuleError, match=message):
        book_after(*events)


# gridmint verify on an export with shop leaves -----------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleExport:
    return build_sample_export(tmp_path_factory.mktemp("sample") / "export")


def _shop_log(
    entries: list[Entry], other_site_token: bool = False
) -> tuple[list[Entry], list[ShopEvent]]:
    """The sample's entries followed by a listing of an external lot, a gridmint_solar lot
    backed by site-a's tokens, a paid order from both and its retirement."""
    site = "site-b" if other_site_token else "site-a"
    refs = [
        (e.site, r)
        for e in entries
        if e.kind is EntryKind.MINT_GEN
        for r in e.refs
        if r.generated_wh > 0 and e.site == site
    ]
    backing = []
    wh = 0
    for _, r in refs:
        backing.append(Backing(r.token_id, r.record_hash, 0, r.generated_wh))
        wh += r.generated_wh
        if wh >= 3000:
            break
    kg = avoided_kg(wh, 707)
    assert kg >= 2
    solar = dataclasses.replace(SOLAR, serial_end=kg, backing=tuple(backing), site_id="site-a")
    paid = OrderPaid(
        3,
        "ord_1",
        "acct-1",
        "EUR",
        line_price_minor(20, 1500) + line_price_minor(2, 9000),
        "pay-1",
        (PaidLine("lot_a", 1, 20, 20, 30), PaidLine("lot_s", 1, 2, 2, 18)),
    )
    retired = Retired(
        4, "ord_1", "Alice", "", (RetiredSpan("lot_a", 1, 20), RetiredSpan("lot_s", 1, 2))
    )
    events: list[ShopEvent] = [EXTERNAL, solar, paid, retired]
    return _append(entries, events), events


def _append(entries: list[Entry], events: list[ShopEvent]) -> list[Entry]:
    out = list(entries)
    for ev in events:
        site = ev.site_id if isinstance(ev, LotListed) and ev.site_id else CARBON_SITE
        ref = ev.lot_id if isinstance(ev, (LotListed, ListingWithdrawn)) else ev.order_id
        out.append(
            Entry(EntryKind.CARBON, len(out), site, 0, market=encode_shop_event(ev), ref=ref)
        )
    return out


def _export(sample: SampleExport, tmp: Path, entries: list[Entry]) -> Path:
    d = tmp / "export"
    shutil.copytree(sample.directory, d)
    rewrite_log(d, entries, sample.builder.log_key)
    return d


def test_verify_replays_the_shop_leaves(sample: SampleExport, tmp_path: Path) -> None:
    entries, events = _shop_log(read_entries(sample.directory))
    solar = events[1]
    assert isinstance(solar, LotListed)
    report = verify_export(_export(sample, tmp_path, entries))
    assert report.ok, report.error
    assert report.shop.as_dict() == {
        "listings": 2,
        "solar_listings": 1,
        "orders": 1,
        "retirements": 1,
        "kg_listed": 1000 + solar.kg,
        "kg_retired": 22,
    }
    assert "carbon shop replayed: 2 lots listed (1 from gridmint" in report.shop.line()


def _tampered(sample: SampleExport, tmp: Path, change: int, replace: ShopEvent | None) -> str:
    entries, events = _shop_log(read_entries(sample.directory))
    base = len(entries) - len(events)
    if replace is None:  # drop the event: a forger rebuilding the log without it
        events = events[:change] + events[change + 1 :]
    else:
        events[change] = replace
    report = verify_export(_export(sample, tmp, _append(entries[:base], events)))
    assert not report.ok
    return str(report.error)


def test_a_retirement_of_an_unlisted_serial_is_named(sample: SampleExport, tmp_path: Path) -> None:
    bad = Retired(
        4, "ord_1", "Alice", "", (RetiredSpan("lot_a", 1, 20), RetiredSpan("lot_s", 1, 9))
    )
    error = _tampered(sample, tmp_path, 3, bad)
    assert "entries.jsonl line" in error and "CARBON shop, ord_1" in error, error
    assert "outside the lot's 1.." in error, error


def test_a_retirement_of_an_already_retired_serial_is_named(
    sample: SampleExport, tmp_path: Path
) -> None:
    entries, events = _shop_log(read_entries(sample.directory))
    base = len(entries) - len(events)
    again = Retired(5, "ord_1", "Bob", "", (RetiredSpan("lot_a", 1, 20),))
    report = verify_export(_export(sample, tmp_path, _append(entries[:base], [*events, again])))
    assert not report.ok
    assert "order ord_1 is retired twice" in str(report.error), report.error


def test_a_retirement_without_payment_is_named(sample: SampleExport, tmp_path: Path) -> None:
    error = _tampered(sample, tmp_path, 2, None)
    assert "retirement for order ord_1, which has no paid order before it" in error, error


def test_a_listing_of_a_token_minted_to_another_site_is_named(
    sample: SampleExport, tmp_path: Path
) -> None:
    entries, events = _shop_log(read_entries(sample.directory), other_site_token=True)
    report = verify_export(_export(sample, tmp_path, entries))
    assert not report.ok
    error = str(report.error)
    assert "CARBON site-a, lot_s" in error and "was minted to site site-b" in error, error
    assert "not to the listing's site site-a" in error, error


def test_a_listing_naming_a_record_not_in_the_export_is_named(
    sample: SampleExport, tmp_path: Path
) -> None:
    entries, events = _shop_log(read_entries(sample.directory))
    base = len(entries) - len(events)
    solar = events[1]
    assert isinstance(solar, LotListed)
    forged = dataclasses.replace(
        solar, backing=(dataclasses.replace(solar.backing[0], record_hash=b"\x07" * 32),)
    )
    report = verify_export(_export(sample, tmp_path, _append(entries[:base], [events[0], forged])))
    assert not report.ok
    assert "is not a signed record of records.jsonl" in str(report.error), report.error
