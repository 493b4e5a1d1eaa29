"""The offsets ledger: named statements and the few functions around them.

One row per (consumer group, topic, partition): the last offset whose effects are committed in
this database, exact outcome counters, and which log it counted (Kafka's topic id and the
cluster id, once known). It moves only inside `Sink.write`'s transaction, with the rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from uuid import UUID

import psycopg

LOCK = """
SELECT last_offset, topic_id, cluster_id FROM eventsink.offsets_ledger
WHERE consumer_group = %s AND topic = %s AND partition = %s
FOR UPDATE
"""
CREATE = """
INSERT INTO eventsink.offsets_ledger (consumer_group, topic, partition)
VALUES (%s, %s, %s)
ON CONFLICT DO NOTHING
"""
IDENTIFY = """
UPDATE eventsink.offsets_ledger
SET topic_id = coalesce(topic_id, %s), cluster_id = coalesce(cluster_id, %s)
WHERE consumer_group = %s AND topic = %s AND partition = %s
"""
ADVANCE = """
UPDATE eventsink.offsets_ledger
SET last_offset = %s,
    events = events + %s,
    rows_applied = rows_applied + %s,
    duplicates = duplicates + %s,
    dead_letters = dead_letters + %s,
    superseded = superseded + %s,
    lost = lost + %s,
    updated_at = now()
WHERE consumer_group = %s AND topic = %s AND partition = %s
"""
RECORD_LOST = """
INSERT INTO eventsink.lost_ranges (consumer_group, topic, partition, first_offset, last_offset, reason)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT DO NOTHING
"""
POSITIONS = """
SELECT partition, last_offset, topic_id, cluster_id FROM eventsink.offsets_ledger
WHERE consumer_group = %s AND topic = %s
"""
ROWS = """
SELECT consumer_group, topic, partition, last_offset, events, rows_applied, duplicates,
       dead_letters, superseded, lost, topic_id, cluster_id, updated_at
FROM eventsink.offsets_ledger
WHERE (%(group)s::text IS NULL OR consumer_group = %(group)s)
  AND (%(topic)s::text IS NULL OR topic = %(topic)s)
ORDER BY consumer_group, topic, partition
"""
# What `eventsink ledger reset` does: the partition starts its (new) log from `to` + 1, and the
# ledger forgets which log it counted until the next batch tells it.
RESET = """
UPDATE eventsink.offsets_ledger
SET last_offset = %(to)s, topic_id = NULL, cluster_id = NULL, updated_at = now()
WHERE consumer_group = %(group)s AND topic = %(topic)s AND partition = %(partition)s
"""

# What `eventsink ledger skip` does: offsets after the ledger up to `to` are accepted as lost.
SKIP = """
UPDATE eventsink.offsets_ledger
SET lost = lost + (%(to)s - last_offset), last_offset = %(to)s, updated_at = now()
WHERE consumer_group = %(group)s AND topic = %(topic)s AND partition = %(partition)s AND last_offset < %(to)s
"""
LAST_OFFSET = """
SELECT last_offset, topic_id, cluster_id FROM eventsink.offsets_ledger
WHERE consumer_group = %s AND topic = %s AND partition = %s
FOR UPDATE
"""
# Every change an operator makes to the ledger, in the change's transaction (migration 0007).
RECORD_CHANGE = """
INSERT INTO eventsink.ledger_changes (
    operator, command, action, consumer_group, topic, partition, before_offset, after_offset,
    before_topic_id, after_topic_id, before_cluster_id, after_cluster_id, reason)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
RETURNING changed_at
"""
HISTORY = """
SELECT changed_at, operator, command, action, consumer_group, topic, partition, before_offset, after_offset,
       before_topic_id, after_topic_id, before_cluster_id, after_cluster_id, reason
FROM eventsink.ledger_changes
WHERE (%(group)s::text IS NULL OR consumer_group = %(group)s)
  AND (%(topic)s::text IS NULL OR topic = %(topic)s)
ORDER BY id DESC
LIMIT %(limit)s
"""

NOTHING_APPLIED = -1


@dataclass(frozen=True, slots=True)
class Position:
    """A partition's ledger row as a writer sees it under its lock."""

    last_offset: int
    topic_id: UUID | None
    cluster_id: str | None


def next_offset(position: Position | None) -> int:
    """Where a partition resumes: past its ledger row's last offset; 0 without a row (nothing
    applied, or a database that lost even the first commit)."""
    return (position.last_offset if position is not None else NOTHING_APPLIED) + 1


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
    lost: int
    topic_id: UUID | None
    cluster_id: str | None
    updated_at: datetime


# Lock the partition's ledger row for this transaction, created if new (the INSERT finds the row
# there and writes nothing, except a partition's first time); parameters `lock_params`, result
# read by `locked`. The row lock is what makes a late writer (a worker fenced out by a rebalance)
# harmless: it waits for the current owner's commit and then sees the offsets it must skip.
# `Sink.write` sends it with the BEGIN and the transaction's settings, in one round trip.
CREATE_AND_LOCK = CREATE.strip() + ";\n" + LOCK.strip()
CREATE_AND_LOCK_RESULTS = 2  # the INSERT's, then the SELECT's


def lock_params(group: str, topic: str, partition: int) -> tuple[str, str, int, str, str, int]:
    return (group, topic, partition) * 2


async def locked(cur: psycopg.AsyncCursor) -> Position:
    """The ledger row CREATE_AND_LOCK locked (the cursor on the SELECT's result)."""
    row = await cur.fetchone()
    assert row is not None
    return Position(int(row[0]), row[1], row[2])


async def identify(
    conn: psycopg.AsyncConnection, group: str, topic: str, partition: int, topic_id: UUID | None, cluster: str | None
) -> None:
    """Record which log the row counts, where it did not know yet (never overwrites)."""
    await conn.execute(IDENTIFY, (topic_id, cluster, group, topic, partition))


def advance_params(
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
    lost: int = 0,
) -> tuple[object, ...]:
    """ADVANCE's parameters (`Sink.write` sends it with the COMMIT, in one round trip)."""
    return (last_offset, events, rows_applied, duplicates, dead_letters, superseded, lost, group, topic, partition)


async def record_lost(
    conn: psycopg.AsyncConnection, group: str, topic: str, partition: int, first: int, last: int, reason: str
) -> None:
    """Remember offsets `first..last` as lost (the broker deleted them before they were applied)."""
    await conn.execute(RECORD_LOST, (group, topic, partition, first, last, reason))


async def positions(conn: psycopg.AsyncConnection, group: str, topic: str) -> dict[int, Position]:
    """The ledger row of each partition of a topic that the ledger knows."""
    cur = await conn.execute(POSITIONS, (group, topic))
    return {int(p): Position(int(o), tid, cid) for p, o, tid, cid in await cur.fetchall()}


async def rows(conn: psycopg.AsyncConnection, group: str | None = None, topic: str | None = None) -> list[LedgerRow]:
    cur = await conn.execute(ROWS, {"group": group, "topic": topic})
    return [LedgerRow(*r) for r in await cur.fetchall()]


@dataclass(frozen=True, slots=True)
class Operator:
    """Who changes the ledger, and the command they typed: recorded with every change."""

    name: str
    command: str


@dataclass(frozen=True, slots=True)
class Change:
    """One partition's ledger row changed by an operator (a row of eventsink.ledger_changes)."""

    changed_at: datetime | None
    operator: str
    command: str
    action: str  # skip | reset
    consumer_group: str
    topic: str
    partition: int
    before_offset: int
    after_offset: int
    before_topic_id: UUID | None
    after_topic_id: UUID | None
    before_cluster_id: str | None
    after_cluster_id: str | None
    reason: str


def _record(conn: psycopg.Connection, change: Change) -> Change:
    row = conn.execute(
        RECORD_CHANGE,
        (
            change.operator,
            change.command,
            change.action,
            change.consumer_group,
            change.topic,
            change.partition,
            change.before_offset,
            change.after_offset,
            change.before_topic_id,
            change.after_topic_id,
            change.before_cluster_id,
            change.after_cluster_id,
            change.reason,
        ),
    ).fetchone()
    assert row is not None
    return replace(change, changed_at=row[0])


def skip(
    conn: psycopg.Connection, group: str, topic: str, partition: int, to: int, reason: str, who: Operator
) -> Change | None:
    """Accept the offsets after the ledger up to `to` as lost: recorded (lost_ranges, the ledger's
    `lost`, ledger_changes) and the partition resumes after `to` (the caller commits). None if
    the ledger is at or past `to` already."""
    row = conn.execute(LAST_OFFSET, (group, topic, partition)).fetchone()
    last = int(row[0]) if row else NOTHING_APPLIED
    if last >= to:
        return None
    if row is None:
        conn.execute(CREATE, (group, topic, partition))
    conn.execute(RECORD_LOST, (group, topic, partition, last + 1, to, "operator"))
    conn.execute(SKIP, {"group": group, "topic": topic, "partition": partition, "to": to})
    topic_id, cluster = (row[1], row[2]) if row else (None, None)
    return _record(
        conn,
        Change(
            None,
            who.name,
            who.command,
            "skip",
            group,
            topic,
            partition,
            last,
            to,
            topic_id,
            topic_id,
            cluster,
            cluster,
            reason,
        ),
    )


def reset(
    conn: psycopg.Connection,
    group: str,
    topic: str,
    partitions: dict[int, str],
    who: Operator,
    to: int = NOTHING_APPLIED,
) -> list[Change]:
    """Start each partition's log again after `to`, forgetting the log it counted (the caller
    commits). `partitions`: partition -> why its log changed, recorded with the change."""
    done = []
    for partition, reason in sorted(partitions.items()):
        row = conn.execute(LAST_OFFSET, (group, topic, partition)).fetchone()
        if row is None:
            continue
        conn.execute(RESET, {"group": group, "topic": topic, "partition": partition, "to": to})
        done.append(
            _record(
                conn,
                Change(
                    None,
                    who.name,
                    who.command,
                    "reset",
                    group,
                    topic,
                    partition,
                    int(row[0]),
                    to,
                    row[1],
                    None,
                    row[2],
                    None,
                    reason,
                ),
            )
        )
    return done


def history(conn: psycopg.Connection, group: str | None, topic: str | None, limit: int) -> list[Change]:
    """The latest changes operators made to the ledger, newest first."""
    cur = conn.execute(HISTORY, {"group": group, "topic": topic, "limit": limit})
    return [Change(*r) for r in cur.fetchall()]
