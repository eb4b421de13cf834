"""The ledger engine: decides the entries of a closed site interval (mint Tgen, burn
self-consumption, battery exchange, decay, discharge, reconcile with the measured state of
charge), plus the trade and grid entries of TradingRules. Not thread-safe; one per log."""

from __future__ import annotations

from dataclasses import dataclass

from rules.ledger.entries import (
    NO_BATTERY,
    PPM,
    SECONDS_PER_HOUR,
    Allocation,
    BatteryParams,
    Entry,
    EntryKind,
    IntervalFlag,
    IntervalFlows,
    LotFlag,
    Measurement,
    Mint,
    Pool,
    convert,
)
from rules.ledger.trading import (
    TradingRules,
)


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """Tolerances of the ledger rules."""

    load_tolerance_wh: int = 10  # |negative derived load| accepted as meter error




@dataclass(frozen=True, slots=True)
class CloseResult:
    """Entries of one closed interval and what was found about it."""

    entries: tuple[Entry, ...]
    flags: IntervalFlag
    allocation: Allocation



class LedgerEngine(TradingRules):
    """Decides entries; every state change goes through the same `apply` the verifier replays.

    Not thread-safe; one engine per ledger log.
    """

    def __init__(self, config: LedgerConfig | None = None) -> None:
        super().__init__()
        self.config = config or LedgerConfig()

    # intervals ---------------------------------------------------------------------------

    def close_interval(
        self, site: str, flows: IntervalFlows, battery: BatteryParams | None = None
    ) -> CloseResult:
        """Mint, allocate, store, decay, discharge and reconcile one site's interval."""
        b = battery or NO_BATTERY
        t = flows.interval_start
        m = Measurement(
            interval_s=flows.interval_s,
            generated_wh=flows.generated_wh,
            imported_wh=flows.imported_wh,
            exported_wh=flows.exported_wh,
            charged_wh=flows.charged_wh,
            discharged_wh=flows.discharged_wh,
            soc_permille=flows.soc_permille,
            capacity_wh=b.usable_capacity_wh,
            soh_permille=b.soh_permille,
            charge_ppm=b.charge_ppm,
            discharge_ppm=b.discharge_ppm,
            self_discharge_ppm_per_h=b.self_discharge_ppm_per_h,
            load_tolerance_wh=self.config.load_tolerance_wh,
        )
        a = m.allocation
        start = len(self.entries)
        mint = self._emit(
            kind=EntryKind.MINT_GEN,
            site=site,
            interval_start=t,
            mints=tuple(
                Mint(r.token_id, site, Pool.TGEN, r.generated_wh, LotFlag.TRADABLE, t)
                for r in flows.records
                if r.generated_wh > 0
            ),
            gen_wh=flows.generated_wh,
            refs=flows.records,
            measurement=m,
        )
        gen_lots = tuple(x.lot_id for x in mint.mints)
        seq = self.state.next_seq

        # 1. decay of the opening Tstorage balance
        opening = self.state.tstorage_wh(site)
        if m.self_discharge_ppm_per_h and opening:
            key = f"decay:{site}"
            c = convert(
                key,
                opening * m.interval_s,
                m.self_discharge_ppm_per_h,
                SECONDS_PER_HOUR * PPM,
                self._carry(key),
            )
            if c.out or c.carry_out != c.carry_in:
                self._emit(
                    kind=EntryKind.STORAGE_DECAY,
                    site=site,
                    interval_start=t,
                    burns=self._fifo_burns(site, Pool.TSTORAGE, c.out) if c.out else (),
                    exit_wh=c.out,
                    convs=(c,),
                )
        # 2. generation to load
        if a.gen_to_load:
            self._emit(
                kind=EntryKind.BURN_SELF_CONSUMPTION,
                site=site,
                interval_start=t,
                burns=self._fifo_burns(site, Pool.TGEN, a.gen_to_load, only=gen_lots),
                exit_wh=a.gen_to_load,
            )
        # 3. generation to battery: Tgen -> Tstorage at the charge efficiency
        if a.gen_to_battery:
            key = f"charge:{site}"
            c = convert(key, a.gen_to_battery, m.charge_ppm, PPM, self._carry(key))
            seq = self.state.next_seq
            self._emit(
                kind=EntryKind.STORAGE_CHARGE,
                site=site,
                interval_start=t,
                burns=self._fifo_burns(site, Pool.TGEN, a.gen_to_battery, only=gen_lots),
                mints=(Mint(f"{seq}/0", site, Pool.TSTORAGE, c.out, LotFlag.NONE, t),)
                if c.out
                else (),
                exit_wh=a.gen_to_battery - c.out,
                convs=(c,),
            )
        # 4. battery to load, then to grid (green first, capped by Tstorage)
        for kind, wanted in (
            (EntryKind.STORAGE_DISCHARGE_LOAD, a.battery_to_load),
            (EntryKind.STORAGE_DISCHARGE_GRID, a.battery_to_grid),
        ):
            if not wanted:
                continue
            key = f"discharge:{site}"
            carry = self._carry(key)
            balance = self.state.tstorage_wh(site)
            # largest x with (x * PPM + carry) // discharge_ppm <= balance
            most = ((balance + 1) * m.discharge_ppm - 1 - carry) // PPM
            green = max(0, min(wanted, most))
            if not green:
                continue
            c = convert(key, green, PPM, m.discharge_ppm, carry)
            seq = self.state.next_seq
            to_grid = kind is EntryKind.STORAGE_DISCHARGE_GRID
            self._emit(
                kind=kind,
                site=site,
                interval_start=t,
                burns=self._fifo_burns(site, Pool.TSTORAGE, c.out) if c.out else (),
                mints=(
                    Mint(
                        f"{seq}/0",
                        site,
                        Pool.TGEN,
                        green,
                        LotFlag.TRADABLE | LotFlag.STORAGE_SOURCED,
                        t,
                    ),
                )
                if to_grid
                else (),
                exit_wh=c.out - green if to_grid else c.out,
                convs=(c,),
                requested_wh=wanted,
            )
        # 5. reconcile with the measured stored energy
        self._reconcile(site, t, m)
        self._emit(
            kind=EntryKind.INTERVAL_CLOSE,
            site=site,
            interval_start=t,
            flags=m.flags,
            cap_wh=m.cap_wh,
            tstorage_wh=self.state.tstorage_wh(site),
            set_aside_wh=self.state.set_aside_wh(site),
        )
        return CloseResult(tuple(self.entries[start:]), m.flags, a)

    def _reconcile(self, site: str, t: int, m: Measurement) -> None:
        held = self.state.tstorage_wh(site)
        aside = self.state.set_aside_wh(site)
        cap = m.cap_wh
        if m.soc_permille is not None and aside:
            # a later reading decides the earlier set-aside: return what fits, burn the rest
            back = min(aside, max(cap - held, 0))
            if back:
                seq = self.state.next_seq
                self._emit(
                    kind=EntryKind.STORAGE_SET_ASIDE_RETURN,
                    site=site,
                    interval_start=t,
                    burns=self._fifo_burns(site, Pool.SET_ASIDE, back),
                    mints=(Mint(f"{seq}/0", site, Pool.TSTORAGE, back, LotFlag.NONE, t),),
                )
            if aside - back:
                self._emit(
                    kind=EntryKind.STORAGE_SET_ASIDE_BURN,
                    site=site,
                    interval_start=t,
                    burns=self._fifo_burns(site, Pool.SET_ASIDE, aside - back),
                    exit_wh=aside - back,
                )
            held += back
        if held > cap:
            seq = self.state.next_seq
            self._emit(
                kind=EntryKind.STORAGE_SET_ASIDE,
                site=site,
                interval_start=t,
                burns=self._fifo_burns(site, Pool.TSTORAGE, held - cap),
                mints=(Mint(f"{seq}/0", site, Pool.SET_ASIDE, held - cap, LotFlag.NONE, t),),
            )

    # market and grid ---------------------------------------------------------------------
