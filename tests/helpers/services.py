"""Real services for tests: a Mosquitto broker on a free port, databases on the real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

PG_DSN = os.environ.get("GRIDMINT_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def free_port() -> int:
    """A TCP port free right now on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    """Block until something accepts TCP connections on the port."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s} s")


class Mosquitto:
    """A real Mosquitto process (Debian's binary) on its own port, stoppable and restartable."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra_config: str = "",
        persistence_dir: Path | None = None,
    ):
        """`persistence_dir`: keep sessions and queued QoS 1 messages there across a polite
        stop (Mosquitto writes its database on SIGTERM); None keeps nothing across restarts."""
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(self.binary).exists():
            raise RuntimeError("mosquitto is not installed: run ./scripts/test, which installs it")
        self.port = port or free_port()
        self.workdir = workdir
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.persistence_dir = persistence_dir
        if persistence_dir is None:
            persistence = "persistence false\n"
        else:
            persistence_dir.mkdir(parents=True, exist_ok=True)
            # The trailing slash: Mosquitto joins the location and the file name as strings.
            persistence = f"persistence true\npersistence_location {persistence_dir}/\n"
        # Started as root, Mosquitto drops to the `mosquitto` user, which may not write in the
        # test's private tmp dir: its log and persistence file would silently go missing.
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{persistence}"
            f"user {getpass.getuser()}\nlog_dest file {self.log}\n{extra_config}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """mqtt://127.0.0.1:PORT"""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the broker and wait until it listens."""
        self.proc = subprocess.Popen(  # noqa: S603 - fixed binary and arguments
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL): no goodbye to clients, no state saved."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def stop(self) -> None:
        """Stop the broker politely."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


def create_pg_database() -> str:
    """Create a fresh database on the real PostgreSQL; return its URL."""
    import asyncpg

    name = f"gridmint_test_{uuid.uuid4().hex[:12]}"

    async def run() -> None:
        conn = await asyncpg.connect(f"{PG_DSN}/postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(run())
    return f"{PG_DSN}/{name}"


def drop_pg_database(url: str) -> None:
    """Drop a database made by create_pg_database."""
    import asyncpg

    name = url.rsplit("/", 1)[1]

    async def run() -> None:
        conn = await asyncpg.connect(f"{PG_DSN}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(run())


class ConfiguredMosquitto:
    """A Mosquitto process with a generated config (TLS, ACL, CRL); `Mosquitto` writes its own."""

    def __init__(self, conf: Path, port: int):
        self.conf, self.port = conf, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(  # noqa: S603
            [binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(200):  # 10 s
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                rc = self.proc.wait(0.05)
                raise RuntimeError(f"mosquitto exited with {rc}; see {self.conf.parent}")
        self.stop()
        raise TimeoutError(f"mosquitto does not listen on {self.port}")

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


async def set_database_open(url: str, is_open: bool) -> None:
    """A real outage of one test database: refuse new connections and terminate the open ones
    (or let it take connections again), while the server keeps serving every other test."""
    import asyncpg

    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(f"{PG_DSN}/postgres")
    try:
        await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(is_open).lower()}')
        if not is_open:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
    finally:
        await conn.close()
