"""Staging: a batch's rows copied (binary COPY) into a session-local temporary table, from
which one set-based statement applies them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg


async def stage(
    conn: psycopg.AsyncConnection, copy_sql: str, types: list[str], rows: Iterable[tuple]
) -> psycopg.AsyncCursor:
    """COPY the rows into the staging table; return a binary cursor for what follows."""
    cur = conn.cursor(binary=True)
    async with cur.copy(copy_sql) as copy:
        copy.set_types(types)
        for row in rows:
            await copy.write_row(row)
    return cur


async def restage_one(
    writer: Any, conn: psycopg.AsyncConnection, clear_sql: str, topic: str, partition: int, record: Any
) -> Any:
    """One record through the bulk path, for a batch redone row by row.

    The staging table empties only at commit; in that redo it still holds the rows of the
    records tried before in the same transaction.
    """
    await conn.execute(clear_sql)
    return await writer.upsert(conn, topic, partition, [record])
