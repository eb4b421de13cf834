"""Edge faults end to end: a real `gridmint edge run` process, a simulated meter over Modbus TCP,
a real Mosquitto and the aggregator (SQLite ledger), all on one accelerated clock (a 5-minute
interval is one real second). Each scenario hurts the edge, lets it recover, drains it, and
reconciles every edge outbox against the ledger (tests/helpers/edge_reconcile.py): every minted
token stored once, none lost, none counted twice, the chain unbroken, no energy lost or booked
twice across the fault.

1. SIGKILL at random moments, several times over (process memory lost, the disk kept).
2. Power cuts: the agent's files on their own ext4, cut as a disk would see it (see `PowerDisk`).
3. A full disk: an alarm (error log, MQTT status, systemd status), no token dropped, and on.
4. A network partition between the edge (in its own network namespace) and the broker.

Scenarios 2-4 need root (loop devices, mounts, namespaces) and skip plainly without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloud.runtime import CloudRuntime
from cloud.storage.store import Store
from edge.drivers.register_map import find_register_map, load_register_map
from edge.keys import create_key_file
from mqttlink import BrokerAddress, MqttLink, Subscription
from protocol import cose, topics
from protocol.clock import SimClock
from simulators.modbus_meter import MeterServer, SimulatedMeter, start_meter_server
from tests.helpers.aggregator import aggregator_runtime
from tests.helpers.edge_reconcile import assert_reconciled, reconcile_edges
from tests.helpers.services import Mosquitto, free_port
from tests.helpers.waiting import until

pytestmark = [pytest.mark.fault, pytest.mark.broker, pytest.mark.modbus, pytest.mark.slow]

DEPLOYMENT = "gridmint-test"
SPEED = 300.0  # one 5-minute interval per real second
T0 = int(datetime(2026, 6, 21, 10, 0, tzinfo=UTC).timestamp())  # June morning: real energy
SEED = int(os.environ.get("GRIDMINT_FAULT_SEED", "20260621"))  # set it to replay a failure


def _root_or_skip(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices, mounts, network namespaces)")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)} (./scripts/test installs them)")


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


# the shared clock, the cloud, the meter and the agent process


@dataclass
class Timeline:
    """One simulated clock for the agent, its meter and the aggregator, in different processes."""

    origin_real: float
    start: int = T0 - 20

    @property
    def clock(self) -> SimClock:
        return SimClock(origin_sim=self.start, speed=SPEED, origin_real=self.origin_real)

    @property
    def args(self) -> list[str]:
        iso = datetime.fromtimestamp(self.start, UTC).isoformat()
        return ["--speed", str(SPEED), "--start", iso, "--origin", repr(self.origin_real)]

    def real_until_boundary(self) -> float:
        """Real seconds to the next interval boundary on the simulated clock."""
        now = self.clock.now()
        return ((now // 300 + 1) * 300 - now) / SPEED


@pytest.fixture
def mosquitto(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Mosquitto]:
    """The broker; for the partition test also listening on the host end of its veth pair,
    from the start (restarting it later could drop a device's first token before the
    aggregator subscribed again, and the cloud anchors a chain at the first record it hears)."""
    extra = ""
    if "partition" in request.fixturenames:
        p: Partition = request.getfixturevalue("partition")
        p.edge_port = free_port()
        extra = f"listener {p.edge_port} {p.host_ip}\n"
    broker = Mosquitto(tmp_path, extra_config=extra)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def timeline() -> Timeline:
    return Timeline(time.time())


@pytest.fixture
async def cloud(
    mosquitto: Mosquitto, tmp_path: Path, timeline: Timeline
) -> AsyncIterator[CloudRuntime]:
    runtime = aggregator_runtime(
        f"sqlite:///{tmp_path / 'cloud.sqlite'}", mosquitto.url, DEPLOYMENT, timeline.clock
    )
    await runtime.start(serve_http=False)
    try:
        assert runtime.mqtt is not None
        assert await runtime.mqtt.wait_ready(10)
        yield runtime
    finally:
        await runtime.stop()


async def in_process_meter(timeline: Timeline, seed: int = 5) -> MeterServer:
    rmap = load_register_map(find_register_map("eastron/sdm630"))
    meter = SimulatedMeter(rmap, "pv", timeline.clock, capacity_w=5000, seed=seed)
    return await start_meter_server({1: meter}, port=0)


class Edge:
    """One edge agent: its config, key, outbox, and the `gridmint edge run` process."""

    def __init__(
        self,
        workdir: Path,
        datadir: Path,
        device_id: str,
        broker_url: str,
        meter: tuple[str, int],
        timeline: Timeline,
        prefix: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ):
        self.device_id, self.site_id = device_id, f"site-{device_id}"
        self.db = datadir / "edge.sqlite"
        self.key_file = datadir / "device.key"
        self.log = workdir / f"{device_id}.log"
        self.config = workdir / f"{device_id}.toml"
        self.config.write_text(
            f"""
device_id = "{device_id}"
site_id = "{self.site_id}"
deployment = "{DEPLOYMENT}"
key_file = "{self.key_file}"
state_db = "{self.db}"
broker_url = "{broker_url}"
capacity_w = 5000
telemetry_interval_s = 0.25
resend_after_s = 3.0

[[meters]]
name = "pv"
register_map = "eastron/sdm630"
host = "{meter[0]}"
port = {meter[1]}
unit_id = 1
timeout_s = 0.5
serial = "SIM-PV-{device_id}"
channels = {{ generated = "export_energy" }}
"""
        )
        self.timeline, self.prefix, self.env = timeline, prefix, env
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def register(self, store: Store) -> None:
        """Make the device key (as `gridmint edge pubkey` does at installation) and register
        it with the aggregator, approved."""
        key = create_key_file(self.key_file)
        pub = cose.public_bytes(key.public_key())
        await store.add_device(self.device_id, self.site_id, pub, cose.key_id(pub), 5000)

    async def start(self) -> None:
        assert self.proc is None
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            self.proc = await asyncio.create_subprocess_exec(
                *self.prefix, sys.executable, "-m", "gridmint", "edge", "run",
                "--config", str(self.config), *self.timeline.args,
                stdout=log, stderr=log, env={**os.environ, **(self.env or {})},
            )  # fmt: skip

    async def kill(self) -> None:
        """SIGKILL: the process's memory is gone, nothing flushed or said goodbye."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await asyncio.wait_for(self.proc.wait(), 30)
        self.proc = None

    async def stop(self) -> None:
        """SIGTERM, as systemd stops it; it must exit cleanly."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(self.proc.wait(), 30)
        self.proc = None
        assert rc == 0, f"agent exited with {rc}: {self.log_text()[-2000:]}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def counts(self) -> tuple[int, int]:
        """(minted, waiting) as the outbox says now; (0, 0) before it exists. Read with its own
        short connection while the agent runs (WAL: readers do not block the writer)."""
        if not self.db.exists():
            return 0, 0
        try:
            db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
            try:
                row = db.execute("SELECT value FROM kv WHERE key = 'minted'").fetchone()
                waiting = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            finally:
                db.close()
        except sqlite3.OperationalError:
            return 0, 0  # not created yet
        return (int(json.loads(row[0])) if row else 0), int(waiting)

    def token_ids(self) -> set[str]:
        db = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return {str(r[0]) for r in db.execute("SELECT token_id FROM outbox")}
        finally:
            db.close()


async def stored(store: Store, device_id: str) -> int:
    return len(await store.list_tokens(device_id=device_id, limit=1_000_000))


async def drain_and_stop(edge: Edge, store: Store, stop_meter: object) -> None:
    """End of a scenario: the meter goes quiet (nothing more to mint), the agent publishes what
    it holds until every token is receipted, then stops as systemd would stop it."""
    await stop_meter()  # type: ignore[operator]

    async def drained() -> bool:
        minted, waiting = edge.counts()
        return minted > 0 and waiting == 0 and await stored(store, edge.device_id) >= minted

    try:
        await until(drained, 40)
    except AssertionError:
        refused = [(r.reason, r.detail) for r in await store.list_rejections(limit=20)]
        raise AssertionError(
            f"not drained: edge (minted, waiting) {edge.counts()}, cloud holds "
            f"{await stored(store, edge.device_id)}, refusals {refused}; agent log:\n"
            + edge.log_text()[-3000:]
        ) from None
    await edge.stop()


async def reconcile(store: Store, edges: list[Edge], at_least: int) -> None:
    rec = await reconcile_edges(store, {e.device_id: e.db for e in edges})
    print(rec.summary())
    assert_reconciled(rec, at_least=at_least)


# 1. SIGKILL, again and again


async def test_sigkill_at_random_moments_loses_and_doubles_nothing(
    cloud: CloudRuntime, mosquitto: Mosquitto, tmp_path: Path, timeline: Timeline
) -> None:
    assert cloud.store is not None
    rng = random.Random(SEED)
    meter = await in_process_meter(timeline)
    edge = Edge(tmp_path, tmp_path / "data", "pi-kill", mosquitto.url,
                ("127.0.0.1", meter.port), timeline)  # fmt: skip
    await edge.register(cloud.store)
    kills = 7
    try:
        for k in range(kills):
            await edge.start()
            # Half the kills land a few ms around an interval boundary, where the agent writes
            # (mint, PUBACKs, receipts); the rest anywhere, start-up included.
            delay = rng.uniform(0.5, 3.0)
            if k % 2:
                delay = max(delay, 1.2)
                delay += timeline.real_until_boundary() - delay % 1.0 + rng.uniform(0, 0.05)
            await asyncio.sleep(delay)
            await edge.kill()
        await edge.start()
        minted_before = edge.counts()[0]
        await until(lambda: _minted_at_least(edge, minted_before + 3), 30)
        await drain_and_stop(edge, cloud.store, meter.stop)
    finally:
        if edge.proc is not None:
            await edge.kill()
        await meter.stop()
    print(f"seed {SEED}: {kills} kills")
    await reconcile(cloud.store, [edge], at_least=5)


async def _minted_at_least(edge: Edge, n: int) -> bool:
    return edge.counts()[0] >= n


# 2. power cuts


class PowerDisk:
    """The agent's data directory on an ext4 file system of its own, which can lose power.

    Faithful and dependable here: the data file system lives on a loop device whose backing
    image sits on a second (outer) ext4. A power cut freezes the outer file system
    (`fsfreeze`): from that instant no write of the loop device reaches its image, while
    everything the data file system had already handed to its block device is in it. A copy
    of the image taken during the freeze is what the SD card would hold after power loss at
    that instant: all that was fsynced, whatever the kernel happened to write back, and none of
    the page cache (what SQLite wrote without a sync is gone). Mounting the copy replays the
    ext4 journal, as a reboot does. (device-mapper's snapshot, flakey or log-writes targets
    would do the same but this kernel has no device-mapper; a SQLite VFS shim would need apsw
    and tests SQLite's promises rather than the file system's.) What it does not model: a
    disk that reorders or drops writes it had acknowledged after a flush.
    """

    def __init__(self, root: Path):
        self.root = root
        self.outer_img = root / "outer.img"
        self.outer = root / "outer"
        self.image = self.outer / "edge.img"
        self.mount = root / "data"
        self.outer_loop = self.data_loop = ""

    def setup(self) -> None:
        self.outer.mkdir(parents=True)
        self.mount.mkdir()
        with self.outer_img.open("wb") as f:
            f.truncate(96 << 20)
        self.outer_loop = _run("losetup", "--find", "--show", str(self.outer_img))
        _run("mkfs.ext4", "-q", self.outer_loop)
        _run("mount", self.outer_loop, str(self.outer))
        with self.image.open("wb") as f:
            f.truncate(32 << 20)
        _run("mkfs.ext4", "-q", "-m", "0", str(self.image))
        self._attach()

    def _attach(self) -> None:
        self.data_loop = _run("losetup", "--find", "--show", str(self.image))
        _run("mount", self.data_loop, str(self.mount))

    def _detach(self) -> None:
        if self.data_loop:
            subprocess.run(["umount", str(self.mount)], check=False, capture_output=True)
            subprocess.run(["losetup", "-d", self.data_loop], check=False, capture_output=True)
            self.data_loop = ""

    async def cut(self, edge: Edge) -> None:
        """Cut the power: the disk stops at this instant, the agent dies with it."""
        cut_image = self.root / "after-cut.img"
        _run("fsfreeze", "--freeze", str(self.outer))
        try:
            _run("cp", "--sparse=always", str(self.image), str(cut_image))
            assert edge.proc is not None
            with contextlib.suppress(ProcessLookupError):
                edge.proc.kill()  # may sit in fsync on the frozen disk until the thaw
        finally:
            _run("fsfreeze", "--unfreeze", str(self.outer))
        await edge.kill()
        # The old disk's later writes (its page cache, flushed at unmount) never happened.
        self._detach()
        shutil.copyfile(cut_image, self.image)
        cut_image.unlink()
        self._attach()  # power back: mounting replays the journal

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            _run("fsfreeze", "--unfreeze", str(self.outer))
        self._detach()
        if self.outer_loop:
            subprocess.run(["umount", str(self.outer)], check=False, capture_output=True)
            subprocess.run(["losetup", "-d", self.outer_loop], check=False, capture_output=True)


@pytest.fixture
def power_disk(tmp_path: Path) -> Iterator[PowerDisk]:
    _root_or_skip("losetup", "mkfs.ext4", "fsfreeze", "mount", "umount")
    disk = PowerDisk(tmp_path / "power")
    try:
        disk.setup()
        yield disk
    finally:
        disk.teardown()


async def test_power_cuts_lose_no_acknowledged_token_and_never_remint_differently(
    cloud: CloudRuntime, mosquitto: Mosquitto, tmp_path: Path, timeline: Timeline,
    power_disk: PowerDisk,
) -> None:  # fmt: skip
    assert cloud.store is not None
    rng = random.Random(SEED + 2)
    meter = await in_process_meter(timeline, seed=6)
    edge = Edge(tmp_path, power_disk.mount, "pi-power", mosquitto.url,
                ("127.0.0.1", meter.port), timeline)  # fmt: skip
    await edge.register(cloud.store)  # the key is made on the data disk, then power is cut soon
    cuts = 3
    try:
        for _ in range(cuts):
            await edge.start()
            before = await stored(cloud.store, edge.device_id)
            # Cut once the cloud holds something new: a receipted token must survive the cut.
            await until(lambda b=before: _stored_more(cloud.store, edge.device_id, b), 30)
            await asyncio.sleep(rng.uniform(0.0, 1.5))
            await power_disk.cut(edge)
        await edge.start()
        minted_before = edge.counts()[0]
        await until(lambda: _minted_at_least(edge, minted_before + 2), 30)
        await drain_and_stop(edge, cloud.store, meter.stop)
    finally:
        if edge.proc is not None:
            await edge.kill()
        await meter.stop()
    assert "Traceback" not in edge.log_text()
    print(f"seed {SEED + 2}: {cuts} power cuts")
    await reconcile(cloud.store, [edge], at_least=4)


async def _stored_more(store: Store, device_id: str, than: int) -> bool:
    return await stored(store, device_id) > than


# 3. a full disk


class SmallDisk:
    """A small ext4 (loop device) for the agent's data, which the test fills up."""

    def __init__(self, root: Path):
        self.image, self.mount, self.loop = root / "small.img", root / "small", ""
        self.filler = self.mount / "filler"

    def setup(self) -> None:
        self.mount.mkdir(parents=True)
        with self.image.open("wb") as f:
            f.truncate(16 << 20)
        _run("mkfs.ext4", "-q", "-m", "0", str(self.image))
        self.loop = _run("losetup", "--find", "--show", str(self.image))
        _run("mount", self.loop, str(self.mount))

    def fill(self) -> None:
        """Write until the file system refuses another byte."""
        with self.filler.open("wb", buffering=0) as f:
            for chunk in (1 << 20, 4096, 512, 1):
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * chunk)
            os.fsync(f.fileno())
        probe = self.mount / "probe"
        with pytest.raises(OSError) as full, probe.open("wb", buffering=0) as f:
            f.write(b"\0" * 4096)
        probe.unlink(missing_ok=True)
        assert full.value.errno == errno.ENOSPC

    def free(self) -> None:
        self.filler.unlink()

    def teardown(self) -> None:
        if self.loop:
            subprocess.run(["umount", str(self.mount)], check=False, capture_output=True)
            subprocess.run(["losetup", "-d", self.loop], check=False, capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    _root_or_skip("losetup", "mkfs.ext4", "mount", "umount")
    disk = SmallDisk(tmp_path / "disk")
    try:
        disk.setup()
        yield disk
    finally:
        disk.teardown()


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notify socket."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    try:
        yield sock, path
    finally:
        sock.close()


def _notifications(sock: socket.socket) -> list[str]:
    out = []
    with contextlib.suppress(BlockingIOError):
        while True:
            out.append(sock.recv(4096).decode())
    return out


async def test_full_disk_raises_an_alarm_keeps_every_token_and_carries_on(
    cloud: CloudRuntime, mosquitto: Mosquitto, tmp_path: Path, timeline: Timeline,
    small_disk: SmallDisk, systemd_socket: tuple[socket.socket, str],
) -> None:  # fmt: skip
    assert cloud.store is not None
    sock, sock_path = systemd_socket
    meter = await in_process_meter(timeline, seed=7)
    edge = Edge(tmp_path, small_disk.mount, "pi-full", mosquitto.url,
                ("127.0.0.1", meter.port), timeline, env={"NOTIFY_SOCKET": sock_path})  # fmt: skip
    await edge.register(cloud.store)
    statuses: list[dict[str, object]] = []

    async def on_status(_t: str, payload: bytes) -> None:
        statuses.append(json.loads(payload))

    watcher = MqttLink(
        BrokerAddress.parse(mosquitto.url), f"watch-{time.monotonic_ns()}", clean_session=True,
        subscriptions=[Subscription(
            topics.topic(edge.site_id, edge.device_id, topics.Channel.STATUS), on_status)],
    )  # fmt: skip
    notes: list[str] = []
    try:
        await edge.start()
        await until(lambda: _stored_more(cloud.store, edge.device_id, 1), 30)  # type: ignore[arg-type]
        # The broker goes away first, so unsent tokens pile up in the outbox ...
        mosquitto.stop()
        await until(lambda: _waiting_at_least(edge, 3), 30)
        # ... and then the SD card fills up.
        small_disk.fill()
        kept = edge.token_ids()

        async def alarmed() -> bool:
            notes.extend(_notifications(sock))
            return "STORAGE ALARM" in edge.log_text() and any("STORAGE ALARM" in n for n in notes)

        await until(alarmed, 20)
        assert "ERROR" in next(ln for ln in edge.log_text().splitlines() if "STORAGE ALARM" in ln)
        # Several intervals close while the disk is full: no token dropped to make room.
        minted_at_fill = edge.counts()[0]
        await asyncio.sleep(3.0)
        assert edge.alive()
        assert edge.token_ids() >= kept
        assert edge.counts()[0] == minted_at_fill  # nothing minted: no room to store it

        # The broker is back while the disk is still full: the status says why nothing moves.
        mosquitto.start()
        await watcher.start()
        await until(lambda: _status_with_alarm(statuses), 30)
        assert edge.token_ids() >= kept - await _stored_ids(cloud.store, edge.device_id)

        small_disk.free()  # room again: it carries on without a restart

        async def cleared() -> bool:
            notes.extend(_notifications(sock))
            return "storage alarm cleared" in edge.log_text()

        await until(cleared, 20)
        await until(lambda: _minted_at_least(edge, minted_at_fill + 2), 20)
        await until(lambda: _status_clear(statuses), 20)
        await drain_and_stop(edge, cloud.store, meter.stop)
    finally:
        if edge.proc is not None:
            await edge.kill()
        await meter.stop()
        await watcher.stop()
    assert "Traceback" not in edge.log_text()
    alarm = next(s for s in statuses if s.get("storage"))
    assert alarm["state"] == "fault"
    assert int(alarm["storage_failures"]) >= 1  # type: ignore[call-overload]
    await reconcile(cloud.store, [edge], at_least=5)


async def _waiting_at_least(edge: Edge, n: int) -> bool:
    return edge.counts()[1] >= n


async def _status_with_alarm(statuses: list[dict[str, object]]) -> bool:
    return any("disk is full" in str(s.get("storage", "")) for s in statuses)


async def _status_clear(statuses: list[dict[str, object]]) -> bool:
    return bool(statuses) and statuses[-1].get("storage") == ""


async def _stored_ids(store: Store, device_id: str) -> set[str]:
    return {r.token_id for r in await store.list_tokens(device_id=device_id, limit=1_000_000)}


# 4. a network partition


class Partition:
    """The edge in a network namespace of its own, joined to the host by a veth pair: the broker
    listens on the host end, the meter on the namespace's loopback. `cut` takes the host end
    down (no packet either way, no reset: what a dead router or a pulled cable does)."""

    def __init__(self) -> None:
        n = os.getpid() % 200 + random.randrange(50)  # apart from concurrent runs
        self.ns = f"gmf-edge-{os.getpid()}-{n}"
        self.host_dev, self.edge_dev = f"gmfh{os.getpid() % 100000}", f"gmfe{os.getpid() % 100000}"
        self.host_ip, self.edge_ip = f"10.250.{n}.1", f"10.250.{n}.2"
        self.edge_port = 0  # the broker's listener on host_ip, set by the mosquitto fixture

    def setup(self) -> None:
        _run("ip", "netns", "add", self.ns)
        _run("ip", "link", "add", self.host_dev, "type", "veth", "peer", "name", self.edge_dev)
        _run("ip", "link", "set", self.edge_dev, "netns", self.ns)
        _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_dev)
        _run("ip", "link", "set", self.host_dev, "up")
        self.exec("ip", "addr", "add", f"{self.edge_ip}/30", "dev", self.edge_dev)
        self.exec("ip", "link", "set", self.edge_dev, "up")
        self.exec("ip", "link", "set", "lo", "up")

    def exec(self, *cmd: str) -> str:
        return _run("ip", "netns", "exec", self.ns, *cmd)

    @property
    def prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.ns)

    def cut(self) -> None:
        _run("ip", "link", "set", self.host_dev, "down")

    def heal(self) -> None:
        _run("ip", "link", "set", self.host_dev, "up")

    def teardown(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_dev], check=False, capture_output=True)


@pytest.fixture
def partition() -> Iterator[Partition]:
    _root_or_skip("ip")
    if subprocess.run(["ip", "netns", "list"], check=False, capture_output=True).returncode:
        pytest.skip("`ip netns` does not work here")
    p = Partition()
    try:
        p.setup()
    except subprocess.CalledProcessError as exc:
        p.teardown()
        pytest.skip(f"cannot make a network namespace: {exc.stderr}")
    try:
        yield p
    finally:
        p.teardown()


async def test_partition_from_the_broker_keeps_minting_and_drains_after(
    cloud: CloudRuntime, mosquitto: Mosquitto, tmp_path: Path, timeline: Timeline,
    partition: Partition,
) -> None:  # fmt: skip
    assert cloud.store is not None
    # The aggregator is on the broker's loopback listener, the edge on the veth's host end.
    edge_port = partition.edge_port
    meter_port = 15020  # in the edge's namespace: its own port space
    meter = await asyncio.create_subprocess_exec(
        *partition.prefix, sys.executable, "-m", "gridmint", "sim", "meter",
        "--port", str(meter_port), "--capacity-w", "5000", "--seed", "8", *timeline.args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip

    async def stop_meter() -> None:
        if meter.returncode is None:
            meter.send_signal(signal.SIGTERM)
            await asyncio.wait_for(meter.wait(), 15)

    edge = Edge(tmp_path, tmp_path / "data", "pi-part", f"mqtt://{partition.host_ip}:{edge_port}",
                ("127.0.0.1", meter_port), timeline, prefix=partition.prefix)  # fmt: skip
    await edge.register(cloud.store)
    cut = False
    try:
        await edge.start()
        await until(lambda: _stored_more(cloud.store, edge.device_id, 2), 30)  # type: ignore[arg-type]
        partition.cut()
        cut = True
        minted_at_cut = edge.counts()[0]
        await asyncio.sleep(0.5)  # what was on the wire lands or is stuck
        held_at_cut = await stored(cloud.store, edge.device_id)
        await until(lambda: _minted_at_least(edge, minted_at_cut + 5), 30)  # it keeps minting
        assert await stored(cloud.store, edge.device_id) == held_at_cut  # and nothing got out
        partition.heal()
        cut = False
        await drain_and_stop(edge, cloud.store, stop_meter)
    finally:
        if cut:
            partition.heal()
        if edge.proc is not None:
            await edge.kill()
        await stop_meter()
    await reconcile(cloud.store, [edge], at_least=8)
