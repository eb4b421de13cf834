"""Fuzzing ingest (hypothesis) on real storage: random bytes, random topics and mutated records
(bit flips, truncations, splices of two records, a record on another device's topic) each end in
exactly one stored, counted outcome, never an exception; the good record in the same batch is
accepted all the same."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.services.ingest import IngestService
from cloud.storage.store import Store
from protocol import topics
from protocol.receipts import ReceiptStatus
from tests.helpers.records import FakeDevice

DEPLOYMENT = b"gridmint-test"


class _World:
    """One store and one ingest service for every example, on one event loop."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = self.loop.run_until_complete(Store.connect(f"sqlite:///{tmp}/fuzz.db"))
        self.loop.run_until_complete(self.store.migrate())
        self.ingest = IngestService(self.store, DEPLOYMENT, time.time)
        self.victim = FakeDevice("pi-fuzz", site_id="site-fuzz")
        # One good record per example (shrinking included): start far enough back that they stay
        # in the past, within the backfill window.
        now = int(time.time())
        self.good = FakeDevice(
            "pi-good", site_id="site-good", next_start=now - now % 300 - 1500 * 300
        )
        for d in (self.victim, self.good):
            self.loop.run_until_complete(
                self.store.add_device(d.device_id, d.site_id, d.public_key, d.kid, d.capacity_w)
            )
        self.victim_topic = topics.topic("site-fuzz", "pi-fuzz", topics.Channel.TOKENS)
        self.good_topic = topics.topic("site-good", "pi-good", topics.Channel.TOKENS)
        # Records of the victim the fuzzer mutates; none of them is ever published unchanged.
        self.samples = [self.victim.next_token(generated_wh=100 + i).envelope for i in range(4)]

    def close(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_World]:
    w = _World(tmp_path_factory.mktemp("fuzz"))
    yield w
    w.close()


@st.composite
def _mutated(draw: st.DrawFn, samples: list[bytes]) -> bytes:
    base = bytearray(draw(st.sampled_from(samples)))
    how = draw(st.sampled_from(["flip", "truncate", "splice", "insert", "random"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(base) - 1))
            base[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "truncate":
        del base[draw(st.integers(0, len(base) - 1)) :]
    elif how == "splice":
        other = draw(st.sampled_from(samples))
        cut = draw(st.integers(1, len(base) - 1))
        base = base[:cut] + other[cut:]
    elif how == "insert":
        i = draw(st.integers(0, len(base)))
        base[i:i] = draw(st.binary(min_size=1, max_size=8))
    else:
        return draw(st.binary(max_size=600))
    return bytes(base)


_TOPICS = st.one_of(
    st.just("victim"),
    st.sampled_from(
        [
            "gridmint/v1/sites/site-good/devices/pi-good/tokens",  # another device's topic
            "gridmint/v1/sites//devices/x/tokens",
            "gridmint/v1/sites/a/devices/b/c/tokens",
        ]
    ),
    st.text(max_size=40),
)


def test_fuzzed_messages_are_each_refused_counted_and_stored_and_good_data_flows_on(
    world: _World,
) -> None:
    # A splice at a shared prefix, or a bit flipped twice, gives back a genuine record, which
    # would rightly be accepted: those are not mutations.
    mutations = _mutated(world.samples).filter(lambda b: b not in world.samples)

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(st.tuples(_TOPICS, mutations), min_size=1, max_size=8))
    def run(fuzz: list[tuple[str, bytes]]) -> None:
        messages = [(world.victim_topic if t == "victim" else t, p) for t, p in fuzz]
        good = world.good.next_token().envelope
        messages.append((world.good_topic, good))
        before_accepted = world.ingest.counters.accepted
        before_rejected = sum(world.ingest.counters.rejected.values())
        before_stored = len(world.loop.run_until_complete(world.store.list_rejections(10_000)))

        outcomes = world.loop.run_until_complete(world.ingest.handle_batch(messages))

        assert len(outcomes) == len(messages)
        assert all(o.stored for o in outcomes)
        *fuzzed, last = outcomes
        assert last.receipt.status is ReceiptStatus.ACCEPTED, last.receipt.reason
        # A mutation of a signed record is never accepted: no signature covers its new bytes.
        assert all(o.receipt.status is not ReceiptStatus.ACCEPTED for o in fuzzed), [
            (o.receipt.status, o.receipt.reason) for o in fuzzed
        ]
        assert all(o.receipt.reason for o in fuzzed)
        assert world.ingest.counters.accepted == before_accepted + 1
        rejected = sum(world.ingest.counters.rejected.values()) - before_rejected
        assert rejected == len(fuzzed)
        stored = len(world.loop.run_until_complete(world.store.list_rejections(10_000)))
        assert stored - before_stored == len(fuzzed)

    run()
