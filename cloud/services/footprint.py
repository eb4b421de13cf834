"""The account's carbon footprint: calculate, save as the baseline, and compare with the
kilograms the shop retired for the account (docs/carbon-shop.md, "Footprint").

Owns: the flow over cloud.storage.footprint_store with the rules of cloud.domain.footprint.
Bad answers raise `FootprintError` (the API answers 422 with its reason).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cloud.domain.footprint import Footprint, Month, answers, compute, monthly
from cloud.storage.footprint_store import FootprintStore, StoredFootprint


@dataclass(frozen=True, slots=True)
class FootprintView:
    """The account's baseline (None before the first save) and its history, and the months."""

    baseline: StoredFootprint | None
    baseline_footprint: Footprint | None
    history: list[StoredFootprint]
    months: list[Month]
    retired_kg: int


class FootprintService:
    def __init__(self, store: FootprintStore, now: Callable[[], float] = time.time) -> None:
        self.store = store
        self.now = now

    def estimate(self, raw: Mapping[str, Any]) -> Footprint:
        """The footprint of these answers, not saved (FootprintError: a bad answer)."""
        return compute(answers(raw))

    async def save(self, account_id: str, raw: Mapping[str, Any]) -> Footprint:
        """Calculate and store as the account's new baseline."""
        fp = self.estimate(raw)
        await self.store.add(
            account_id, int(self.now() * 1000), fp.model, fp.answers.as_dict(), fp.total_kg
        )
        return fp

    async def view(self, account_id: str) -> FootprintView:
        history = await self.store.history(account_id)
        retired = await self.store.retired_kg(account_id)
        baseline = history[-1] if history else None
        # The baseline recomputed from its answers with the current factors: its lines (the
        # stored total is the one it was saved with, under `model`).
        try:
            fp = None if baseline is None else compute(answers(baseline.answers))
        except ValueError:  # answers of an older model that the current one no longer takes
            fp = None
        months = monthly(
            [(h.saved_ms, h.total_kg) for h in history], retired, int(self.now() * 1000)
        )
        return FootprintView(baseline, fp, history, months, sum(kg for _, kg in retired))
