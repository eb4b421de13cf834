"""Green Button (NAESB REQ.21 ESPI v3.3) format layer: a streaming writer, an incremental reader.

Pure functions over the records in `model`: no database, no HTTP, no clock. `write_feed` exports a
site's interval energy as an Atom feed; `read_feed` imports one (e.g. a utility revenue meter's
file, for reconciliation); `validate` checks a file against the vendored ESPI schema
(`schemas/`, see its README). xmlschema is imported only by `validate`.
"""

from cloud.domain.greenbutton.local_time import (
    NO_DST_RULE,
    DstOperator,
    DstRule,
    LocalTimeParameters,
    local_time_parameters,
)
from cloud.domain.greenbutton.model import (
    Accumulation,
    FlowDirection,
    IntervalValue,
    MeasurementKind,
    Quality,
    ReadingSpec,
    UnitSymbol,
    UsagePointInfo,
)
from cloud.domain.greenbutton.reader import (
    FeedItem,
    GreenButtonError,
    IntervalBlockValues,
    LoadedFeed,
    LoadedReading,
    Reading,
    load_feed,
    read_feed,
    validate,
)
from cloud.domain.greenbutton.writer import write_feed

__all__ = [
    "NO_DST_RULE",
    "Accumulation",
    "DstOperator",
    "DstRule",
    "FeedItem",
    "FlowDirection",
    "GreenButtonError",
    "IntervalBlockValues",
    "IntervalValue",
    "LoadedFeed",
    "LoadedReading",
    "LocalTimeParameters",
    "MeasurementKind",
    "Quality",
    "Reading",
    "ReadingSpec",
    "UnitSymbol",
    "UsagePointInfo",
    "load_feed",
    "local_time_parameters",
    "read_feed",
    "validate",
    "write_feed",
]
