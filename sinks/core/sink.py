"""`Sink.write(batch)`: the exactly-once protocol, one transaction per (topic, partition) batch.

1. lock the partition's ledger row (late writers of the same partition queue behind it);
2. refuse a batch that would leave a hole after the ledger (`OffsetGap`);
3. skip records at or below the ledger: they were applied by an earlier transaction;
4. upsert the rest through the kind's writer, sorted by key;
5. hand the dead letters to the caller, who must have them delivered before we commit;
6. advance the ledger and its counters; commit.

A record whose content the database refuses (a data or constraint error) fails the bulk
statement; the batch is then redone row by row in savepoints, so that record alone becomes a
dead letter and the rest still commits. Any other database error means "not now": it is raised
as `TransientSinkError` and the caller retries the whole batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import psycopg
from psycopg_pool import AsyncConnectionPool

from schemas.deadletter import DeadLetter, Reason
from sinks.core import ledger as offsets
from sinks.core.batch import Batch, Outcome, Record, WriteResult
from sinks.errors import OffsetGap, TransientSinkError, is_record_error, is_transient

DeadLetterHandler = Callable[[list[DeadLetter]], Awaitable[None]]


class RowWriter(Protocol):
    kind: str
    stage_ddl: tuple[str, ...]

    async def upsert(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, records: Sequence[Record[Any]]
    ) -> Outcome: ...

    async def upsert_one(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, record: Record[Any]
    ) -> Outcome: ...


async def _no_dead_letters(dead: list[DeadLetter]) -> None:
    if dead:
        raise RuntimeError("dead letters produced but no handler configured")


class Sink:
    """Applies batches of one event kind for one consumer group."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        consumer_group: str,
        writer: RowWriter,
        on_dead_letters: DeadLetterHandler = _no_dead_letters,
        connection_timeout: float = 10.0,
    ) -> None:
        self.pool = pool
        self.group = consumer_group
        self.writer = writer
        self.on_dead_letters = on_dead_letters
        self.connection_timeout = connection_timeout

    async def write(self, batch: Batch[Any]) -> WriteResult[Any]:
        try:
            try:
                return await self._write(batch, isolate=False)
            except psycopg.Error as exc:
                if not is_record_error(exc):
                    raise
                return await self._write(batch, isolate=True)
        except OffsetGap:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise TransientSinkError(f"{type(exc).__name__}: {exc}") from exc
            raise

    async def positions(self, topic: str) -> dict[int, int]:
        async with self.pool.connection(timeout=self.connection_timeout) as conn:
            return await offsets.positions(conn, self.group, topic)

    async def _write(self, batch: Batch[Any], *, isolate: bool) -> WriteResult[Any]:
        topic, partition = batch.topic, batch.partition
        async with self.pool.connection(timeout=self.connection_timeout) as conn:
            async with conn.transaction():
                last = await offsets.lock(conn, self.group, topic, partition)
                if batch.first_offset > last + 1 and not batch.gap_verified:
                    raise OffsetGap(topic, partition, last + 1, batch.first_offset)
                result: WriteResult[Any] = WriteResult(topic, partition, last, max(last, batch.last_offset))
                if batch.last_offset <= last:
                    result.replayed = len(batch)
                    return result

                fresh = [r for r in batch.records if r.offset > last]
                dead = [d for d in batch.rejected if d.offset > last]
                known = sum(1 for o in batch.known_duplicates if o > last)
                result.replayed = len(batch) - len(fresh) - len(dead) - known
                result.known_duplicates = known

                if isolate:
                    outcome = await self._one_by_one(conn, topic, partition, fresh)
                else:
                    outcome = await self.writer.upsert(conn, topic, partition, fresh)

                for record in fresh:
                    if record.offset in outcome.rejected:
                        reason, detail = outcome.rejected[record.offset]
                        dead.append(record.dead_letter(topic, partition, reason, detail))
                    elif record.offset in outcome.applied:
                        result.applied.append(record)
                    else:
                        result.duplicates.append(record)
                dead.sort(key=lambda d: d.offset)
                result.dead_letters = dead
                result.superseded = len(outcome.superseded)

                if dead:
                    await self.on_dead_letters(dead)
                await offsets.advance(
                    conn,
                    self.group,
                    topic,
                    partition,
                    batch.last_offset,
                    events=result.events,
                    rows_applied=len(result.applied),
                    duplicates=len(result.duplicates) + known,
                    dead_letters=len(dead),
                    superseded=result.superseded,
                )
        return result

    async def _one_by_one(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, records: Sequence[Record[Any]]
    ) -> Outcome:
        outcome = Outcome()
        for record in sorted(records, key=_sort_key):
            try:
                async with conn.transaction():
                    one = await self.writer.upsert_one(conn, topic, partition, record)
            except psycopg.Error as exc:
                if not is_record_error(exc):
                    raise
                outcome.rejected[record.offset] = (Reason.DB_REJECTED, _describe(exc))
                continue
            outcome.applied |= one.applied
            outcome.rejected.update(one.rejected)
            outcome.superseded |= one.superseded
        return outcome


def _sort_key(record: Record[Any]) -> tuple:
    event = record.event
    return (str(getattr(event, "tenant_id", "")), str(getattr(event, "dedupe_id", "")), record.offset)


def _describe(exc: psycopg.Error) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"database refused the record ({exc.sqlstate}): {first_line}"
