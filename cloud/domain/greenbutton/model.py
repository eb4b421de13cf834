"""Green Button (NAESB REQ.21 ESPI v3.3) values as gridmint writes and reads them.

Plain frozen records with integer fields and the ESPI code lists gridmint uses. Pure: no I/O, no
XML; the writer and reader translate these to and from the Atom feed.

Units: energy is a whole number of the reading type's base unit (Wh for uom 72) after the power of
ten multiplier is applied; times are epoch seconds (UTC); costs are hundred-thousandths of the
reading type's currency (ESPI `cost`: 100000 = 1 USD when the currency is 840).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

#: ESPI Int48 (`value`, `cost`): a signed 48-bit integer. The schema's own maxInclusive says
#: 2**47, one more than a signed 48-bit integer holds; gridmint keeps to the 48-bit range.
INT48_MIN = -(2**47)
INT48_MAX = 2**47 - 1
#: ESPI UInt32 (`duration`, `intervalLength`).
UINT32_MAX = 2**32 - 1

#: `roleFlags` (HexBinary16) bits. The schema numbers them from 1 ("Bit 1 - isMirror ... Bit 4 -
#: isDER"), as IEEE 2030.5 RoleFlagsType numbers the same flags from 0 (bit 3 isDER): 0x0008.
ROLE_IS_MIRROR = 0x0001
ROLE_IS_PREMISES_AGGREGATION_POINT = 0x0002
ROLE_IS_PEV = 0x0004
ROLE_IS_DER = 0x0008
ROLE_IS_REVENUE_QUALITY = 0x0010
ROLE_IS_DC = 0x0020


class FlowDirection(IntEnum):
    """ESPI FlowDirectionKind, the codes gridmint uses."""

    NONE = 0
    FORWARD = 1  # delivered to the customer: import
    NET = 4  # forward minus reverse
    REVERSE = 19  # received from the customer: export
    TOTAL = 20  # forward plus reverse


class Accumulation(IntEnum):
    """ESPI AccumulationKind, the codes gridmint uses."""

    NONE = 0
    BULK_QUANTITY = 1  # a register reading: the meter's running total at the interval's end
    CUMULATIVE = 3
    DELTA_DATA = 4  # interval data: the energy within each interval
    INSTANTANEOUS = 12


class Quality(IntEnum):
    """ESPI QualityOfReading, the codes gridmint uses (`ReadingQuality/quality`)."""

    VALID = 0
    MANUALLY_EDITED = 7
    ESTIMATED = 8  # estimated using a reference day
    INTERPOLATED = 9  # estimated using linear interpolation (gridmint: gap-filled)
    QUESTIONABLE = 10
    DERIVED = 11  # derived (gridmint: computed by the edge from device counters)
    PROJECTED = 12
    RAW = 14
    VALIDATED = 17
    REVENUE_QUALITY = 19


class MeasurementKind(IntEnum):
    """ESPI MeasurementKind, the codes gridmint uses."""

    DEMAND = 8
    ENERGY = 12
    POWER = 37
    VOLTAGE = 54


class UnitSymbol(IntEnum):
    """ESPI UnitSymbolKind, the codes gridmint uses."""

    W = 38
    VA = 61
    VAR = 63
    VAH = 71
    WH = 72
    VARH = 73


#: ServiceKind electricity (UsagePoint ServiceCategory/kind).
SERVICE_ELECTRICITY = 0
#: CommodityKind 1, "electricity SecondaryMetered": a value as the meter measures it.
COMMODITY_ELECTRICITY = 1


@dataclass(frozen=True, slots=True)
class UsagePointInfo:
    """The UsagePoint of a feed: one per site.

    `site_id` is the UsagePoint's id in its resource URL (gridmint writes the site id there; a
    utility's feed has its own usage point id). `status`: 0 off, 1 on.
    """

    site_id: str
    title: str = ""
    is_virtual: bool = False
    is_der: bool = False
    status: int = 1


@dataclass(frozen=True, slots=True)
class ReadingSpec:
    """A MeterReading and its ReadingType: one quantity in one direction.

    `key` names the MeterReading within its UsagePoint ("import", "export", "pv", "net"); gridmint
    writes it as the MeterReading's id. `power_of_ten` is the ReadingType's powerOfTenMultiplier:
    the file holds values in uom x 10**power_of_ten, while IntervalValue.value_wh is always in the
    base unit (Wh for uom 72). `currency` is an ISO 4217 numeric code (840 USD, 978 EUR), None
    when the reading carries no costs.
    """

    key: str
    title: str = ""
    flow_direction: int = FlowDirection.FORWARD
    kind: int = MeasurementKind.ENERGY
    uom: int = UnitSymbol.WH
    power_of_ten: int = 0
    accumulation: int = Accumulation.DELTA_DATA
    interval_s: int = 900
    commodity: int = COMMODITY_ELECTRICITY
    currency: int | None = None


@dataclass(frozen=True, slots=True)
class IntervalValue:
    """One IntervalReading.

    `start`: epoch seconds (UTC); `value_wh`: energy in the reading type's base unit (Wh);
    `quality`: an ESPI QualityOfReading code (see Quality), None for none given; `cost`: in
    hundred-thousandths of the reading type's currency, None for none given.
    """

    start: int
    duration_s: int
    value_wh: int
    quality: int | None = None
    cost: int | None = None
