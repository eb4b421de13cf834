"""One call from envelope bytes to a verified record, with one exception and a stable reason.

Owns: the mapping from the envelope's and the payload's error types to `RejectReason`, and the
order of the checks. Imports nothing of ours beyond protocol. Pure: no I/O.

`check_envelope` checks in this order: size, envelope structure (incl. canonical form), signature,
payload fields. The signature is verified *before* the payload's fields are decoded, so bytes from
an unknown signer are never interpreted as a record. `classify` is for callers that must first
find the public key by the envelope's kid: it decodes without verifying, and the caller must still
call `cose.verify` before trusting anything it returned.
"""

from __future__ import annotations

from protocol import cose
from protocol import record as rec_mod
from protocol.reasons import RejectReason

__all__ = ["RecordRejected", "check_envelope", "classify"]


class RecordRejected(ValueError):
    """Envelope bytes refused, with the reason a receipt or counter reports."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def check_envelope(data: bytes, public_key: bytes, aad: bytes) -> rec_mod.IntervalRecord:
    """Return the record in `data` if it is a valid envelope signed by `public_key` for `aad`.

    `aad` is the deployment id (COSE external AAD). Raises RecordRejected otherwise.
    """
    s1 = _parse(data)
    try:
        cose.verify(s1, public_key, aad)
    except cose.SignatureError as exc:
        raise RecordRejected(RejectReason.BAD_SIGNATURE, str(exc)) from None
    return _decode(s1.payload)


def classify(data: bytes) -> tuple[cose.Sign1, rec_mod.IntervalRecord]:
    """Parse the envelope and decode its record WITHOUT checking the signature.

    Raises RecordRejected for everything but a bad signature. Verify with `cose.verify` (using the
    key that `Sign1.kid` names) before trusting the record.
    """
    s1 = _parse(data)
    return s1, _decode(s1.payload)


def _parse(data: bytes) -> cose.Sign1:
    if len(data) > cose.MAX_RECORD_BYTES:
        raise RecordRejected(
            RejectReason.TOO_LARGE,
            f"envelope is {len(data)} bytes, over the limit of {cose.MAX_RECORD_BYTES}",
        )
    try:
        return cose.parse(data)
    except cose.EnvelopeError as exc:
        reason = RejectReason.NON_CANONICAL if exc.non_canonical else RejectReason.MALFORMED
        raise RecordRejected(reason, str(exc)) from None


def _decode(payload: bytes) -> rec_mod.IntervalRecord:
    try:
        return rec_mod.decode(payload)
    except rec_mod.RecordFormatError as exc:
        if exc.non_canonical:
            reason = RejectReason.NON_CANONICAL
        elif exc.version:
            reason = RejectReason.UNSUPPORTED_VERSION
        else:
            reason = RejectReason.BAD_FIELD
        raise RecordRejected(reason, str(exc)) from None
