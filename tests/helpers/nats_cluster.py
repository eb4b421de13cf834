"""A real 3-node nats-server cluster (JetStream + MQTT) on loopback, for broker failover tests.

Each node gets free ports (client, route, MQTT, monitoring), its own JetStream folder and the
config rendered by cloud/nats_config.py (the one the docs give operators). `start()` returns
when every node sees a JetStream meta leader and its MQTT listener takes a connect and a
subscribe; `kill(i)` is a SIGKILL (no goodbye to clients, no flush); `restart(i)` brings the
node back on the same ports and folder and waits for it the same way.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from cloud.nats_config import NatsNode, broker_url_list, render_nats_node
from mqttlink import MqttLink, Subscription, parse_brokers
from tests.helpers.services import free_port


def nats_binary() -> str:
    """Debian's nats-server (./scripts/test installs it), or skip the test plainly."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(binary).exists():
        pytest.skip("nats-server is not installed (apt-get install nats-server; ./scripts/test)")
    return binary


class NatsCluster:
    """Three nats-server processes that form one JetStream cluster with MQTT on every node."""

    def __init__(self, workdir: Path, size: int = 3):
        self.binary = nats_binary()
        self.workdir = workdir
        self.nodes = [
            NatsNode(f"n{i + 1}", free_port(), free_port(), free_port(), free_port())
            for i in range(size)
        ]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        for node in self.nodes:
            self.conf(node).write_text(
                render_nats_node(
                    node,
                    self.nodes,
                    workdir / f"{node.name}-jetstream",
                    log_file=self.log(node),
                    max_file_store="1G",
                )
            )

    def conf(self, node: NatsNode) -> Path:
        return self.workdir / f"{node.name}.conf"

    def log(self, node: NatsNode) -> Path:
        return self.workdir / f"{node.name}.log"

    def url(self, first: int = 0) -> str:
        """The failover list, starting at node `first` (mqtt://a,mqtt://b,mqtt://c)."""
        return broker_url_list(self.nodes, first)

    def running(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p is not None]

    async def start(self, timeout_s: float = 30.0) -> None:
        """Start every node and wait until the cluster serves MQTT on each."""
        for i in range(len(self.nodes)):
            self._spawn(i)
        await self.wait_ready(self.running(), timeout_s)

    def _spawn(self, i: int) -> None:
        self.procs[i] = subprocess.Popen(  # noqa: S603 - fixed binary and arguments
            [self.binary, "-c", str(self.conf(self.nodes[i]))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self, i: int) -> None:
        """SIGKILL node `i`: its clients' connections drop, it saves nothing."""
        proc = self.procs[i]
        if proc is not None:
            proc.kill()
            proc.wait(10)
            self.procs[i] = None

    async def restart(self, i: int, timeout_s: float = 30.0) -> None:
        """Start node `i` again (same ports and JetStream folder) and wait until it serves."""
        self._spawn(i)
        await self.wait_ready([i], timeout_s)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 10 s)."""
        for proc in self.procs:
            if proc is not None:
                proc.terminate()
        for i, proc in enumerate(self.procs):
            if proc is not None:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
                self.procs[i] = None

    async def meta_leader(self, i: int) -> str | None:
        """Node `i`'s view of the JetStream meta leader (its /jsz), None if it has none."""
        node = self.nodes[i]
        async with httpx.AsyncClient(timeout=2.0) as http:
            r = await http.get(f"http://{node.http_host}:{node.http_port}/jsz")
            r.raise_for_status()
            leader = r.json().get("meta_cluster", {}).get("leader")
        return leader or None

    async def wait_ready(self, which: list[int], timeout_s: float) -> None:
        """Wait until each node of `which` knows a meta leader and takes an MQTT subscribe."""
        deadline = time.monotonic() + timeout_s
        for i in which:
            while True:
                proc = self.procs[i]
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"nats-server {self.nodes[i].name} exited: {self._tail(i)}")
                try:
                    if await self.meta_leader(i) is not None:
                        break
                except httpx.HTTPError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no JetStream leader on {self.nodes[i].name}")
                await asyncio.sleep(0.1)
            await self._wait_mqtt(i, deadline)

    async def _wait_mqtt(self, i: int, deadline: float) -> None:
        # The first MQTT client of an account makes the server create the MQTT streams (R3,
        # replicated through the meta leader); until then a CONNECT can be refused. The link
        # reconnects every second until a SUBACK arrives.
        async def ignore(_topic: str, _payload: bytes) -> None:
            return None

        node = self.nodes[i]
        link = MqttLink(
            parse_brokers(node.mqtt_url),
            f"probe-{node.name}-{time.monotonic_ns()}",
            clean_session=True,
            subscriptions=[Subscription("gridmint-probe/ready", ignore)],
            reconnect_min_s=1,
            reconnect_max_s=1,
        )
        await link.start()
        try:
            if not await link.wait_ready(max(0.1, deadline - time.monotonic())):
                raise TimeoutError(f"MQTT on {node.name} is not serving: {self._tail(i)}")
        finally:
            await link.stop()

    def _tail(self, i: int, lines: int = 15) -> str:
        try:
            text = self.log(self.nodes[i]).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
