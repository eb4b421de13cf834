"""A stand-in for the shop's side of the payments port: it records what it was told."""

from __future__ import annotations


class RecordingOutcomes:
    """PaymentOutcomes that records each call as (kind, ref, payment_id, reason)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str]] = []
        self.raise_next = False

    async def succeeded(self, ref: str, payment_id: str) -> None:
        self._maybe_raise()
        self.calls.append(("succeeded", ref, payment_id, ""))

    async def failed(self, ref: str, payment_id: str, reason: str) -> None:
        self._maybe_raise()
        self.calls.append(("failed", ref, payment_id, reason))

    def _maybe_raise(self) -> None:
        if self.raise_next:
            self.raise_next = False
            raise RuntimeError("the shop is down")
