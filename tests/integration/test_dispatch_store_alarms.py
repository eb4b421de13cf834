"""Alarm transitions stored in bulk (DispatchStore.apply_alarms) behave as one raise_alarm or
clear_alarm after another."""

from __future__ import annotations

from cloud.storage.dispatch_store import DispatchStore
from cloud.storage.store import Store


async def test_bulk_transitions_match_one_by_one(store: Store) -> None:
    ds = DispatchStore(store.engine)
    assert await ds.raise_alarm("fault", "d1", "s1", "old", 1) is True
    raised = await ds.apply_alarms(
        [
            ("offline", "d0", "s0", "", False),  # nothing open: nothing written
            ("fault", "d1", "s1", "again", True),  # already open: kept, not raised twice
            ("offline", "d2", "s2", "device is offline", True),
            ("offline", "d2", "s2", "", False),  # raised and cleared in one batch
            ("offline", "d2", "s2", "device is offline", True),  # and raised again
            ("fault", "d1", "s1", "", False),
        ],
        now_ms=10,
    )
    assert raised == ["offline", "offline"]
    rows = sorted(
        (a.kind, a.device_id, a.detail, a.raised_ms, a.cleared_ms or 0) for a in await ds.alarms()
    )
    assert rows == [
        ("fault", "d1", "old", 1, 10),
        ("offline", "d2", "device is offline", 10, 0),
        ("offline", "d2", "device is offline", 10, 10),
    ]
    assert await ds.apply_alarms([], now_ms=11) == []
