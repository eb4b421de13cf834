"""One transaction across stores.

Owns: nothing but the boundary. A service opens `UnitOfWork(engine)`, passes the connection to
each store's `write_*` methods, and everything commits together or not at all. Stores never
commit what a unit of work hands them: an order fill and its ledger leaves, or a settlement and
its trade row, are one transaction.
"""

from __future__ import annotations

from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


class UnitOfWork:
    """`async with UnitOfWork(engine) as conn:` commits on success, rolls back on any error."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._cm = engine.begin()

    async def __aenter__(self) -> AsyncConnection:
        return await self._cm.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._cm.__aexit__(exc_type, exc, tb)
