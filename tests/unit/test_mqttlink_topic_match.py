"""mqttlink's topic matching: every (filter, topic) pair below, against the pairs that match
(as paho.mqtt.client.topic_matches_sub answered them when this test was written)."""

from __future__ import annotations

import itertools

from mqttlink import topic_matches

FILTERS = [
    "gridmint/v1/sites/+/devices/+/telemetry",
    "gridmint/v1/sites/+/devices/+/acks",
    "gridmint/v1/#",
    "#",
    "+",
    "+/+",
    "a/#",
    "a/+/c",
    "a/b/c",
    "+/b/#",
    "$SYS/#",
    "a",
]
TOPICS = [
    "gridmint/v1/sites/s1/devices/d1/telemetry",
    "gridmint/v1/sites/s1/devices/d1/acks",
    "gridmint/v1/sites/s1/devices/d1/telemetry/extra",
    "gridmint/v1/ledger/checkpoint",
    "gridmint/v1",
    "a",
    "a/b",
    "a/b/c",
    "a/x/c",
    "a/b/c/d",
    "x/b",
    "a/",
    "/a",
    "$SYS/broker/uptime",
    "$SYS",
]

MATCHES = {
    ("gridmint/v1/sites/+/devices/+/telemetry", "gridmint/v1/sites/s1/devices/d1/telemetry"),
    ("gridmint/v1/sites/+/devices/+/acks", "gridmint/v1/sites/s1/devices/d1/acks"),
    ("gridmint/v1/#", "gridmint/v1/sites/s1/devices/d1/telemetry"),
    ("gridmint/v1/#", "gridmint/v1/sites/s1/devices/d1/acks"),
    ("gridmint/v1/#", "gridmint/v1/sites/s1/devices/d1/telemetry/extra"),
    ("gridmint/v1/#", "gridmint/v1/ledger/checkpoint"),
    ("gridmint/v1/#", "gridmint/v1"),
    ("#", "gridmint/v1/sites/s1/devices/d1/telemetry"),
    ("#", "gridmint/v1/sites/s1/devices/d1/acks"),
    ("#", "gridmint/v1/sites/s1/devices/d1/telemetry/extra"),
    ("#", "gridmint/v1/ledger/checkpoint"),
    ("#", "gridmint/v1"),
    ("#", "a"),
    ("#", "a/b"),
    ("#", "a/b/c"),
    ("#", "a/x/c"),
    ("#", "a/b/c/d"),
    ("#", "x/b"),
    ("#", "a/"),
    ("#", "/a"),
    ("+", "a"),
    ("+/+", "gridmint/v1"),
    ("+/+", "a/b"),
    ("+/+", "x/b"),
    ("+/+", "a/"),
    ("+/+", "/a"),
    ("a/#", "a"),
    ("a/#", "a/b"),
    ("a/#", "a/b/c"),
    ("a/#", "a/x/c"),
    ("a/#", "a/b/c/d"),
    ("a/#", "a/"),
    ("a/+/c", "a/b/c"),
    ("a/+/c", "a/x/c"),
    ("a/b/c", "a/b/c"),
    ("+/b/#", "a/b"),
    ("+/b/#", "a/b/c"),
    ("+/b/#", "a/b/c/d"),
    ("+/b/#", "x/b"),
    ("$SYS/#", "$SYS/broker/uptime"),
    ("$SYS/#", "$SYS"),
    ("a", "a"),
}


def test_topic_matching_agrees_with_paho() -> None:
    for flt, topic in itertools.product(FILTERS, TOPICS):
        expected = (flt, topic) in MATCHES
        assert topic_matches(flt.split("/"), topic.split("/")) == expected, (flt, topic)
