"""The offsets ledger: named statements and the few functions around them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

LOCK = """
SELECT last_offset FROM eventsink.offsets_ledger
WHERE consumer_group = %s AND topic = %s AND partition = %s
FOR UPDATE
"""
CREATE = """
INSERT INTO eventsink.offsets_ledger (consumer_group, topic, partition)
VALUES (%s, %s, %s)
ON CONFLICT DO NOTHING
"""
ADVANCE = """
UPDATE eventsink.offsets_ledger
SET last_offset = %s,
    events = events + %s,
    rows_applied = rows_applied + %s,
    duplicates = duplicates + %s,
    dead_letters = dead_letters + %s,
    superseded = superseded + %s,
    updated_at = now()
WHERE consumer_group = %s AND topic = %s AND partition = %s
"""
POSITIONS = """
SELECT partition, last_offset FROM eventsink.offsets_ledger
WHERE consumer_group = %s AND topic = %s
"""
ROWS = """
SELECT consumer_group, topic, partition, last_offset, events, rows_applied, duplicates,
       dead_letters, superseded, updated_at
FROM eventsink.offsets_ledger
WHERE (%(group)s::text IS NULL OR consumer_group = %(group)s)
  AND (%(topic)s::text IS NULL OR topic = %(topic)s)
ORDER BY consumer_group, topic, partition
"""

NOTHING_APPLIED = -1


@dataclass(frozen=True, slots=True)
class LedgerRow:
    consumer_group: str
    topic: str
    partition: int
    last_offset: int
    events: int
    rows_applied: int
    duplicates: int
    dead_letters: int
    superseded: int
    updated_at: datetime


async def lock(conn: psycopg.AsyncConnection, group: str, topic: str, partition: int) -> int:
    """Lock the partition's ledger row for this transaction; return its last applied offset.

    The row lock is what makes a late writer (a worker fenced out by a rebalance) harmless:
    it waits for the current owner's commit and then sees the offsets it must skip.
    """
    key = (group, topic, partition)
    row = await (await conn.execute(LOCK, key)).fetchone()
    if row is None:
        await conn.execute(CREATE, key)
        row = await (await conn.execute(LOCK, key)).fetchone()
    assert row is not None
    return int(row[0])


async def advance(
    conn: psycopg.AsyncConnection,
    group: str,
    topic: str,
    partition: int,
    last_offset: int,
    *,
    events: int,
    rows_applied: int,
    duplicates: int,
    dead_letters: int,
    superseded: int = 0,
) -> None:
    await conn.execute(
        ADVANCE,
        (last_offset, events, rows_applied, duplicates, dead_letters, superseded, group, topic, partition),
    )


async def positions(conn: psycopg.AsyncConnection, group: str, topic: str) -> dict[int, int]:
    """Last applied offset per partition of a topic, for the partitions the ledger knows."""
    cur = await conn.execute(POSITIONS, (group, topic))
    return {int(p): int(o) for p, o in await cur.fetchall()}


async def rows(conn: psycopg.AsyncConnection, group: str | None = None, topic: str | None = None) -> list[LedgerRow]:
    cur = await conn.execute(ROWS, {"group": group, "topic": topic})
    return [LedgerRow(*r) for r in await cur.fetchall()]
