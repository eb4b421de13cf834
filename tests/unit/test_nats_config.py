"""The nats-server cluster config: what each node must say for MQTT to survive a lost node."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.nats_config import (
    STREAM_REPLICAS,
    NatsNode,
    broker_url_list,
    cluster_nodes,
    local_cluster,
    render_nats_node,
)
from mqttlink import parse_brokers


def test_each_node_routes_to_the_others_and_keeps_its_own_store() -> None:
    nodes = local_cluster(20000)
    confs = [render_nats_node(n, nodes, Path(f"/srv/{n.name}")) for n in nodes]
    for node, conf in zip(nodes, confs, strict=True):
        assert f'server_name: "{node.name}"' in conf
        assert f'store_dir: "/srv/{node.name}"' in conf
        assert node.route_url not in conf.split("routes:")[1]  # not a route to itself
        for other in nodes:
            if other != node:
                assert other.route_url in conf
        mqtt = conf.split("mqtt {")[1]
        assert f"stream_replicas: {STREAM_REPLICAS}" in mqtt and STREAM_REPLICAS == 3
        assert 'ack_wait: "30s"' in mqtt
        assert "max_ack_pending: 1024" in mqtt  # >= the aggregator's 256-message batches
        assert f'http: "127.0.0.1:{node.http_port}"' in conf
    ports = [p for n in nodes for p in (n.client_port, n.route_port, n.mqtt_port, n.http_port)]
    assert len(set(ports)) == 12


def test_the_failover_list_starts_where_asked_and_parses() -> None:
    nodes = cluster_nodes(["a.example", "b.example", "c.example"])
    assert [n.mqtt_port for n in nodes] == [1883] * 3
    url = broker_url_list(nodes, 1)
    assert url == "mqtt://b.example:1883,mqtt://c.example:1883,mqtt://a.example:1883"
    assert [a.host for a in parse_brokers(url)] == ["b.example", "c.example", "a.example"]


def test_shapes_that_cannot_hold_three_replicas_are_refused() -> None:
    nodes = local_cluster(20000)
    with pytest.raises(ValueError, match="cannot hold 3 replicas"):
        render_nats_node(nodes[0], nodes[:2], Path("/s"))
    twins = [*nodes[:2], NatsNode("n1", 1, 2, 3, 4)]
    with pytest.raises(ValueError, match="server_name"):
        render_nats_node(twins[0], twins, Path("/s"))
    with pytest.raises(ValueError, match="not one of"):
        render_nats_node(NatsNode("x", 1, 2, 3, 4), nodes, Path("/s"))
    with pytest.raises(ValueError, match="config string"):
        render_nats_node(nodes[0], nodes, Path('/s"; evil'))
