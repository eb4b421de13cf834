"""Which aggregator process writes the ledger: one per database, elected by a lock.

Owns: the lock. On PostgreSQL it is a session-level advisory lock held on a connection of its
own: the server drops it the moment that session ends, so when the sequencer process dies
(killed, out of memory, its machine gone) a standby's next `hold()` wins it. On SQLite, whose
database is one file on one machine, it is an exclusive `flock` on a file beside the database,
which the kernel drops when the process dies.

Why a lock and not a leader row: a row with a heartbeat needs a timeout to be declared dead,
and during that timeout either nobody or two processes write. The session lock ends with the
session, and the ledger's own unique sequence numbers refuse a write from a process that lost
the lock without noticing (its next write fails and it falls back to standby).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)


def lock_key(deployment: str) -> int:
    """The advisory lock's 64-bit key: one per deployment, so deployments sharing a
    PostgreSQL server elect their sequencers independently."""
    digest = hashlib.sha256(b"gridmint-ledger-sequencer\x00" + deployment.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class SequencerLock:
    """`hold()` is True while this process is the ledger's one writer."""

    def __init__(self, engine: AsyncEngine, database_url: str, deployment: str):
        self.engine = engine
        self.key = lock_key(deployment)
        url = make_url(database_url)
        self.backend = url.get_backend_name()
        self._conn: AsyncConnection | None = None  # PostgreSQL: the session holding the lock
        self._fd: int | None = None  # SQLite: the open, flocked file
        self._path: Path | None = None
        if self.backend == "sqlite" and url.database and url.database != ":memory:":
            self._path = Path(f"{url.database}.sequencer.lock")
        self.held = False
        # The last `hold()` could not reach the database: nobody can write the ledger now, and
        # nobody is known to have taken the lock either.
        self.unreachable = False

    async def hold(self) -> bool:
        """Take the lock if it is free, or confirm this process still has it.

        False when another process holds it or the database cannot be reached (a session that
        broke has lost its lock, so it is not trusted to be held).
        """
        try:
            if self.backend == "postgresql":
                self.held = await self._hold_advisory()
            else:
                self.held = self._hold_file()
            self.unreachable = False
        except Exception as exc:  # database down: not the sequencer until it is back
            if self.held:
                log.error("lost the ledger sequencer lock: %s", exc)
            await self._drop_connection()
            self.held = False
            self.unreachable = True
        return self.held

    async def release(self) -> None:
        """Give the lock up (at shutdown), so a standby takes over at once."""
        if self._conn is not None and self.held:
            with contextlib.suppress(Exception):
                await self._conn.execute(
                    text("SELECT pg_advisory_unlock(:k)"), {"k": self.key}
                )
        await self._drop_connection()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None
        self.held = False

    async def _hold_advisory(self) -> bool:
        if self._conn is None:
            self._conn = await self.engine.connect()
            # Autocommit: the lock is the session's, and no transaction should stay open on
            # this connection for the life of the process.
            await self._conn.execution_options(isolation_level="AUTOCOMMIT")
        if self.held:
            await self._conn.execute(text("SELECT 1"))  # the session (and its lock) lives
            return True
        got = await self._conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key})
        return bool(got)

    def _hold_file(self) -> bool:
        if self._path is None:  # an in-memory database lives in this process only
            return True
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        if self.held:
            return True
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
