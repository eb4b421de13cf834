"""Strict reading of the small canonical CBOR maps gridmint sends besides interval records.

Owns: the shape every such message shares, and the typed field readers. Imports nothing of ours.

Every message is a CBOR map with unsigned integer keys 0..23 in ascending order, whose key 0 is a
text naming the message kind and version (e.g. "gridmint/telemetry/v1"). Two reasons:

* A record's key 0 is the *integer* 1 and a statement is an array, so no message here can ever be
  decoded as a generation token or a statement, whatever key or AAD signed it.
* Keys 0..23 encode in one byte, so ascending order is RFC 8949's canonical order and cbor2's
  plain encoder produces canonical bytes: `check_canonical` re-encodes the map rebuilt from the
  decoded fields and compares it byte for byte, as protocol/record.py does.

Values are integers, text and byte strings only: no floats (type() checks, because in Python
True == 1 and 1.0 == 1, yet they are other CBOR items).
"""

from __future__ import annotations

from typing import Any, TypeGuard

import cbor2

MAX_UINT64 = 2**64 - 1
MAX_KEY = 23  # keys above 23 take two bytes, and canonical key order would then differ


class WireFormatError(ValueError):
    """Bytes that are not a well-formed, canonical message of the expected kind."""

    def __init__(self, message: str, *, non_canonical: bool = False) -> None:
        super().__init__(message)
        self.non_canonical = non_canonical


def load_map(
    payload: bytes, kind: str, known_keys: frozenset[int], max_bytes: int
) -> dict[int, Any]:
    """Parse `payload` into a map of known integer keys whose key 0 is `kind`.

    Raises WireFormatError for anything else. The size is checked before parsing, so an
    oversized message costs nothing to refuse.
    """
    if not isinstance(payload, bytes):
        raise WireFormatError("payload must be bytes")
    if len(payload) > max_bytes:
        raise WireFormatError(f"payload is {len(payload)} bytes, over {max_bytes}")
    try:
        obj = cbor2.loads(payload)
    except Exception as exc:  # cbor2 raises several types for bad input
        raise WireFormatError(f"payload is not CBOR: {exc}") from None
    if not isinstance(obj, dict):
        raise WireFormatError("payload is not a CBOR map")
    got = obj.get(0)
    if type(got) is not str or got != kind:
        raise WireFormatError(f"payload is not a {kind} message (kind {got!r})")
    unknown = [k for k in obj if type(k) is not int or k not in known_keys]
    if unknown:
        raise WireFormatError(f"unknown payload keys {unknown!r}")
    return obj


def is_uint(value: object, maximum: int = MAX_UINT64) -> TypeGuard[int]:
    """An int (never a bool) in 0..maximum."""
    return type(value) is int and 0 <= value <= maximum


def is_int(value: object, lo: int, hi: int) -> TypeGuard[int]:
    """An int (never a bool) in lo..hi."""
    return type(value) is int and lo <= value <= hi


def uint(m: dict[int, Any], key: int, name: str, maximum: int = MAX_UINT64) -> int:
    """Field `key` as an unsigned integer no greater than `maximum`."""
    v = m.get(key)
    if not is_uint(v, maximum):
        raise WireFormatError(f"field {name} must be an unsigned integer <= {maximum}, got {v!r}")
    return v


def sint(m: dict[int, Any], key: int, name: str, lo: int, hi: int) -> int:
    """Field `key` as an integer in lo..hi."""
    v = m.get(key)
    if not is_int(v, lo, hi):
        raise WireFormatError(f"field {name} must be an integer in {lo}..{hi}, got {v!r}")
    return v


def text(m: dict[int, Any], key: int, name: str, max_len: int, min_len: int = 0) -> str:
    """Field `key` as text of min_len..max_len code points."""
    v = m.get(key)
    if type(v) is not str or not min_len <= len(v) <= max_len:
        raise WireFormatError(f"field {name} must be text of {min_len}..{max_len} characters")
    return v


def check_canonical(rebuilt: dict[int, Any], payload: bytes) -> None:
    """Refuse `payload` unless it is exactly the plain-mode encoding of the rebuilt map.

    `rebuilt` must have its keys in ascending order (0..23), which makes plain mode canonical.
    Indefinite lengths, long-form integers, duplicate keys and unsorted keys in the input do not
    survive the round trip, so all are refused here.
    """
    if cbor2.dumps(rebuilt) != payload:
        raise WireFormatError("payload is not in canonical CBOR form", non_canonical=True)
