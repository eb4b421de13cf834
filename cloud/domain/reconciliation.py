"""Reconciliation: the virtual meter against a revenue meter, per day and month.

Owns: comparing two sorted interval streams of one quantity (the virtual meter's, rolled to
the revenue data's interval length, and the revenue meter's) and saying where they differ and
why: per local day and month the virtual and revenue Wh, the difference (virtual - revenue),
its size relative to the revenue reading (per mille), whether it is over the tolerance; and
the intervals that explain it: a value that differs, an interval the virtual meter lacks (a
gap), estimated, or flagged (a counter reset or meter swap), or one the revenue data lacks.
Pure: no I/O. Streams both inputs; holds the per-day and per-month sums of the period and at
most `max_explanations` intervals.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from cloud.domain.virtual_meter import MeterInterval, State

QUANTITY_OF_FLOW = {
    "import": "imported_wh",
    "export": "exported_wh",
    "generation": "generated_wh",
    "net": "net_wh",
}
MAX_EXPLANATIONS = 500


@dataclass(frozen=True, slots=True)
class RevenueInterval:
    start: int
    interval_s: int
    value_wh: int
    quality: int | None = None


@dataclass(slots=True)
class Totals:
    """One day's or month's sums (`label`: YYYY-MM-DD or YYYY-MM in the site's zone)."""

    label: str
    virtual_wh: int = 0
    revenue_wh: int = 0
    compared: int = 0  # intervals with both readings
    virtual_only: int = 0
    revenue_only: int = 0
    explained: int = 0  # intervals listed (or counted) as explaining a difference

    @property
    def difference_wh(self) -> int:
        return self.virtual_wh - self.revenue_wh

    @property
    def relative_permille(self) -> int | None:
        """|difference| per mille of the revenue reading (None when it read nothing)."""
        if self.revenue_wh == 0:
            return None
        return abs(self.difference_wh) * 1000 // abs(self.revenue_wh)

    def over(self, tolerance_permille: int) -> bool:
        rel = self.relative_permille
        if rel is None:
            return self.difference_wh != 0
        return rel > tolerance_permille


@dataclass(frozen=True, slots=True)
class Explanation:
    start: int
    interval_s: int
    virtual_wh: int | None
    revenue_wh: int | None
    reasons: tuple[str, ...]


@dataclass(slots=True)
class Report:
    flow: str
    tolerance_permille: int
    days: list[Totals] = field(default_factory=list)
    months: list[Totals] = field(default_factory=list)
    explanations: list[Explanation] = field(default_factory=list)
    explanations_left_out: int = 0

    @property
    def total(self) -> Totals:
        t = Totals("total")
        for m in self.months:
            t.virtual_wh += m.virtual_wh
            t.revenue_wh += m.revenue_wh
            t.compared += m.compared
            t.virtual_only += m.virtual_only
            t.revenue_only += m.revenue_only
            t.explained += m.explained
        return t

    @property
    def days_over(self) -> list[Totals]:
        return [d for d in self.days if d.over(self.tolerance_permille)]


def _merge(
    virtual: Iterable[MeterInterval], revenue: Iterable[RevenueInterval]
) -> Iterator[tuple[int, int, MeterInterval | None, RevenueInterval | None]]:
    """(start, length, virtual or None, revenue or None) in start order."""
    v_it, r_it = iter(virtual), iter(revenue)
    v, r = next(v_it, None), next(r_it, None)
    while v is not None or r is not None:
        if r is None or (v is not None and v.start < r.start):
            assert v is not None
            yield v.start, v.interval_s, v, None
            v = next(v_it, None)
        elif v is None or r.start < v.start:
            yield r.start, r.interval_s, None, r
            r = next(r_it, None)
        else:
            yield v.start, v.interval_s, v, r
            v, r = next(v_it, None), next(r_it, None)


def reconcile(
    virtual: Iterable[MeterInterval],
    revenue: Iterable[RevenueInterval],
    flow: str,
    tz: ZoneInfo,
    *,
    tolerance_permille: int = 10,
    max_explanations: int = MAX_EXPLANATIONS,
) -> Report:
    """Compare the two streams (both sorted by start, at the same interval length)."""
    quantity = QUANTITY_OF_FLOW[flow]
    report = Report(flow, tolerance_permille)
    days: dict[str, Totals] = {}
    months: dict[str, Totals] = {}
    for start, length, v, r in _merge(virtual, revenue):
        local = datetime.fromtimestamp(start, UTC).astimezone(tz)
        day = days.get(dk := f"{local:%Y-%m-%d}") or days.setdefault(dk, Totals(dk))
        month = months.get(mk := f"{local:%Y-%m}") or months.setdefault(mk, Totals(mk))
        v_wh = None if v is None or v.state is State.MISSING else v.value(quantity)
        reasons: list[str] = []
        if v is not None and v.state is State.MISSING:
            reasons.append("missing in the virtual meter (no record)")
        if v is not None and v.state is State.ESTIMATED:
            reasons.append("estimated")
        if v is not None and v.state is State.PARTIAL:
            reasons.append(f"{v.missing} virtual interval(s) missing inside")
        if v is not None:
            reasons += [f"flagged {f}" for f in sorted(v.flags)]
        for t in (day, month):
            if v_wh is not None:
                t.virtual_wh += v_wh
            if r is not None:
                t.revenue_wh += r.value_wh
            if v_wh is not None and r is not None:
                t.compared += 1
            elif v_wh is not None:
                t.virtual_only += 1
            elif r is not None:
                t.revenue_only += 1
        if r is None:
            reasons.append("missing in the revenue data")
        elif v_wh is not None and v_wh != r.value_wh:
            reasons.insert(0, "readings differ")
        if not reasons or (v_wh is not None and r is not None and v_wh == r.value_wh):
            continue  # the same reading (flags on an equal reading explain nothing)
        day.explained += 1
        month.explained += 1
        if len(report.explanations) < max_explanations:
            report.explanations.append(
                Explanation(
                    start, length, v_wh, r.value_wh if r is not None else None, tuple(reasons)
                )
            )
        else:
            report.explanations_left_out += 1
    report.days = list(days.values())
    report.months = list(months.values())
    return report
