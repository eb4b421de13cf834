"""An order request's digest (stored with the order, compared on a retry) is SHA-256 of its terms
as compact JSON, whichever way it is computed."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given
from hypothesis import strategies as st

from cloud.services.market import OrderRequest
from rules.market import Side, TimeInForce


def _json_digest(r: OrderRequest) -> bytes:
    terms = [
        r.site_id,
        int(r.side),
        r.interval_start,
        r.quantity_wh,
        r.limit_price,
        r.tif.value,
        r.min_fill_wh,
        r.source,
    ]
    return hashlib.sha256(json.dumps(terms, separators=(",", ":")).encode()).digest()


u = st.integers(min_value=0, max_value=2**64)


@given(st.text(), st.sampled_from(Side), u, u, u, st.sampled_from(TimeInForce), u, st.text())
def test_digest_is_sha256_of_the_terms_as_compact_json(
    site: str, side: Side, t: int, q: int, p: int, tif: TimeInForce, f: int, source: str
) -> None:
    r = OrderRequest("c", site, side, t, q, p, tif, f, source)
    assert r.digest() == _json_digest(r)


def test_digest_of_terms_that_are_not_plain_ints_is_still_their_json() -> None:
    r = OrderRequest("c", "s", Side.BUY, True, 5.0, 3)  # type: ignore[arg-type]
    assert r.digest() == _json_digest(r)
