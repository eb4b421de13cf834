"""Bulk writes inside a unit of work: COPY on PostgreSQL, executemany elsewhere.

Owns: how many rows go into a table at once. A group commit of the market writes a few hundred
orders, trades and leaves per transaction; through SQLAlchemy's executemany each row costs
parameter processing and each distinct batch size a new prepared statement, which was most of
the time a durable order spent in storage. PostgreSQL's COPY (asyncpg's binary
`copy_records_to_table`) writes the same rows in one round trip, in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, bindparam, insert, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

COPY_FROM_ROWS = 16  # a COPY costs a type lookup and two round trips: not worth it for a few


async def insert_rows(
    conn: AsyncConnection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert `rows` (tuples in `columns` order) into `table` within `conn`'s transaction."""
    if not rows:
        return
    if conn.dialect.name != "postgresql" or len(rows) < COPY_FROM_ROWS:
        await conn.execute(insert(table), [dict(zip(columns, r, strict=True)) for r in rows])
        return
    driver = await _driver_in_transaction(conn)
    await driver.copy_records_to_table(table.name, records=rows, columns=list(columns))


async def update_rows(
    conn: AsyncConnection,
    table: Table,
    key: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """Set `columns` of the rows whose `key` column equals each row's first value (rows are
    (key, *columns) tuples), within `conn`'s transaction; on PostgreSQL one statement."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":
        stmt = (
            update(table)
            .where(table.c[key] == bindparam("b_key"))
            .values({c: bindparam(f"b_{c}") for c in columns})
        )
        names = ["b_key", *(f"b_{c}" for c in columns)]
        await conn.execute(stmt, [dict(zip(names, r, strict=True)) for r in rows])
        return
    cols = [key, *columns]
    types = [table.c[c].type.compile(dialect=conn.dialect) for c in cols]
    arrays = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(types))
    sets = ", ".join(f"{c} = u.{c}" for c in columns)
    sql = (
        f"UPDATE {table.name} AS t SET {sets} FROM unnest({arrays}) AS u({', '.join(cols)}) "
        f"WHERE t.{key} = u.{key}"
    )
    driver = await _driver_in_transaction(conn)
    await driver.execute(sql, *([r[i] for r in rows] for i in range(len(cols))))


async def _driver_in_transaction(conn: AsyncConnection) -> Any:
    """The asyncpg connection under a SQLAlchemy one, inside `conn`'s transaction."""
    driver = (await conn.get_raw_connection()).driver_connection
    if driver is None:
        raise RuntimeError("the connection has no driver connection")
    if not driver.is_in_transaction():
        # SQLAlchemy's asyncpg adapter sends BEGIN with the first statement it runs; a COPY
        # or an UPDATE sent first on the driver would commit on its own, outside the unit of
        # work.
        await conn.execute(text("SELECT 1"))
        if not driver.is_in_transaction():
            raise RuntimeError("bulk write outside a transaction")
    return driver
