"""`Sink.write(batch)`: the exactly-once protocol, one transaction per (topic, partition) batch.

1. lock the partition's ledger row (late writers of the same partition queue behind it), and
   refuse a batch from another log than the one the ledger counted (`LogChanged`);
2. check what the stream side claims of the batch's offsets (`sinks.core.claims`): refuse a
   batch whose records skip offsets no claimed hole explains (`ClaimRefused`), and one that would
   leave a hole after the ledger (`OffsetGap`) unless a claim names that hole as it stands under
   the lock (nothing there after exactly this ledger offset, or offsets the broker deleted right
   after it: recorded as lost);
3. skip records at or below the ledger: they were applied by an earlier transaction;
4. trust the dedupe cache only where the ledger confirms it: a cached duplicate committed past
   the ledger (the database went back in time) is applied like any other record;
5. upsert the rest through the kind's writer, sorted by key;
6. hand the dead letters to the caller, who must have them delivered (or stored, with the same
   connection) before we commit;
7. advance the ledger and its counters; commit.

Steps 1 and 7 are each one simple query of several statements: the BEGIN, the transaction's
settings and the lock go to the server at once, and so do the advance and the COMMIT (psycopg's
client-side binding: the values bound there are the group, topic, partition, offsets, counters and
settings, never a record's). The pool's connections are in autocommit mode so that the BEGIN and
the COMMIT are ours to send; a failed transaction is rolled back here (`_rollback`), as psycopg's
`Transaction` would.

Failures are typed by what to do about them (`sinks.errors.is_transient`). A transient one
(connection lost, timeout, conflict, a missing table) is raised as `TransientSinkError` and the
caller retries the whole batch. Every transaction has a client-side bound
(`transaction_timeout`), so no write waits for ever on a server that stopped answering (a
backend stuck on a synchronous standby that was promoted, a half-open connection); a connection
that exceeded it, was lost, or reaches a node that became a standby (a failover) is closed, never
given back to the pool, and the retry connects to whichever node takes writes. A batch that ran
out of time (statement timeout, or the client's bound) is split in halves, each its own
transaction: a batch too large for the time a slow table gives it still gets written.

Anything else raised while applying records fails the bulk statement; the batch is then redone
record by record in savepoints, and each record that still fails becomes a dead letter alone
while the rest commits, unless no record's value can have caused it: an error of our own code
(`sinks.errors.is_bug`) is raised, never dead-lettered. So a batch ends, within two attempts
(per part, once split), either committed, or as a transient error, or as a bug the pipeline
gives up on after a few attempts (the worker restarts): never in an endless retry.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import psycopg
import psycopg_pool

from schemas.deadletter import DeadLetter, Reason
from sinks.core import claims, ledger
from sinks.core.batch import Batch, Outcome, Record, WriteResult
from sinks.errors import (
    ClaimRefused,
    LogChanged,
    OffsetGap,
    PoolBusy,
    SinkError,
    TransientSinkError,
    connection_is_spent,
    describe,
    is_bug,
    is_transient,
    no_primary,
    timed_out,
)
from sinks.health import DatabaseHealth
from sinks.local_settings import APPLY
from sinks.pool import Pool
from sinks.secrets import scrub

# Given a batch's dead letters and the batch's connection (inside its transaction): deliver them.
DeadLetterHandler = Callable[[list[DeadLetter], psycopg.AsyncConnection], Awaitable[None]]
# Told of a batch that ran out of time (and of why) before it is written in halves: each half
# may take as long again, so whoever runs the sink says so (a log line, a counter).
SplitHandler = Callable[[Batch[Any], BaseException], None]


class RowWriter(Protocol):
    kind: str
    stage_ddl: tuple[str, ...]
    # True when what a record does depends on the records before it (analysis: an event older than
    # the state it meets is superseded): a batch redone record by record keeps offset order.
    ordered: bool

    async def upsert(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, records: Sequence[Record[Any]]
    ) -> Outcome: ...

    async def prepare(self, conn: psycopg.AsyncConnection, records: Sequence[Record[Any]]) -> None:
        """Before a batch is redone record by record: take, at once and in one order, the locks
        its records will take one by one (concurrent writers then cannot deadlock)."""

    async def upsert_one(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, record: Record[Any]
    ) -> Outcome: ...


async def _no_dead_letters(dead: list[DeadLetter], conn: psycopg.AsyncConnection) -> None:
    if dead:
        raise RuntimeError("dead letters produced but no handler configured")


class Sink:
    """Applies batches of one event kind for one consumer group."""

    def __init__(
        self,
        pool: Pool,
        consumer_group: str,
        writer: RowWriter,
        on_dead_letters: DeadLetterHandler = _no_dead_letters,
        connection_timeout: float = 10.0,
        transaction_timeout: float = 120.0,
        on_split: SplitHandler | None = None,
    ) -> None:
        self.pool = pool
        self.group = consumer_group
        self.writer = writer
        self.on_dead_letters = on_dead_letters
        self.connection_timeout = connection_timeout
        self.transaction_timeout = transaction_timeout
        self.on_split = on_split
        self.health = DatabaseHealth()
        # Connections this sink holds now, by use ("write", "ledger"): said when the pool runs dry.
        self._held: Counter[str] = Counter()

    @asynccontextmanager
    async def _connection(self, use: str) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pool connection for one transaction (`use`: "write" or "ledger"), bounded by
        `transaction_timeout`; closed (not given back) when the block ends on an error that leaves
        it worth nothing.

        Raises `TransientSinkError` (from `PoolTimeout`) when none comes within
        `connection_timeout`, saying what the pool held then: connections made or being made,
        idle ones, those in use here and by what (a pool full of writers, or one still
        connecting, or a database that does not answer or takes no writes); `PoolBusy` when this
        sink held every connection the pool may make (the pool is the sink's alone: one per kind).

        psycopg's `pool.connection()` does the same but for its `usage_ms` statistic, which
        nothing of ours reads."""
        try:
            conn = await self.pool.getconn(timeout=self.connection_timeout)
        except psycopg_pool.PoolTimeout as exc:
            busy = sum(self._held.values()) >= self.pool.max_size
            raise (PoolBusy if busy else TransientSinkError)(f"PoolTimeout: {exc} ({self._pool_state()})") from exc
        self._held[use] += 1
        try:
            # As psycopg's `pool.connection()`: `async with conn` ends what the block left open
            # (after a spent connection is closed below: then it has nothing to do).
            async with conn:
                try:
                    async with asyncio.timeout(self.transaction_timeout):
                        yield conn
                except BaseException as exc:
                    if connection_is_spent(exc) and not conn.closed:
                        await conn.close()  # the pool discards a closed connection
                    raise
        finally:
            try:
                await self.pool.putconn(conn)
            finally:
                # After: a waiter that times out meanwhile still counts this one as held.
                self._held[use] -= 1

    def _pool_state(self) -> str:
        # Not the pool's count of waiting requests: psycopg keeps one that timed out (this one
        # too) in its queue until a connection comes back, so the count grows with each retry.
        stats = self.pool.get_stats()
        size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
        held = ", ".join(f"{n} {use}" for use, n in sorted(self._held.items()) if n) or "none"
        return (
            f"pool {self.pool.name}: {size} of at most {stats.get('pool_max', 0)} connections made or being made, "
            f"{idle} idle, in use here: {held}"
        )

    async def write(self, batch: Batch[Any]) -> WriteResult[Any]:
        """Apply the batch in one transaction (or, if it runs out of time, in halves); see the
        module's docstring.

        Raises `TransientSinkError` (retry the batch later), `OffsetGap` (the batch does not
        follow the ledger), `ClaimRefused` (its offsets are not what it claims) or `LogChanged`
        (another log than the ledger's); nothing else for what a record causes.
        """
        try:
            return await self._write_once(batch)
        except TransientSinkError as exc:
            if len(batch) < 2 or exc.__cause__ is None or not timed_out(exc.__cause__):
                raise
            if self.on_split is not None:
                self.on_split(batch, exc)
        # Each half commits alone; if the second fails, a retry of the whole batch finds the
        # first one applied (at or below the ledger) and skips it.
        first, second = _halves(batch)
        done = await self.write(first)
        return _merged(done, await self.write(second))

    async def _write_once(self, batch: Batch[Any]) -> WriteResult[Any]:
        began = time.monotonic()
        try:
            result = await self._write_transaction(batch)
        except TransientSinkError as exc:
            cause = exc.__cause__ or exc
            # A pool full of this sink's own transactions waited for them, not for the database.
            unreachable = not isinstance(exc, PoolBusy) and no_primary(cause)
            # Nothing of the batch committed since it began: a write that waited 30 s for a row
            # lock, or one past the client's bound (which the other writes waited for, PoolBusy),
            # has been failing since then, not since its error came.
            self.health.failed(scrub(str(exc)), unreachable=unreachable, since=began)
            raise
        self.health.committed()
        return result

    async def _write_transaction(self, batch: Batch[Any]) -> WriteResult[Any]:
        try:
            try:
                return await self._write(batch, isolate=False)
            except Exception as exc:
                if is_transient(exc) or isinstance(exc, SinkError):
                    raise
                return await self._write(batch, isolate=True)
        except (OffsetGap, ClaimRefused, LogChanged, TransientSinkError):
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError):  # the client's bound (`Sink._connection`): says nothing itself
                raise TransientSinkError(
                    f"the transaction ran past its {self.transaction_timeout:g} s bound (transaction_timeout)"
                ) from exc
            if is_transient(exc):
                raise TransientSinkError(f"{type(exc).__name__}: {exc}") from exc
            raise

    async def positions(self, topic: str) -> dict[int, ledger.Position]:
        async with self._connection("ledger") as conn:
            return await ledger.positions(conn, self.group, topic)

    async def _write(self, batch: Batch[Any], *, isolate: bool) -> WriteResult[Any]:
        topic, partition = batch.topic, batch.partition
        claims.check_range(batch)  # needs no ledger: refused before a connection is taken
        async with self._connection("write") as conn:
            # The pool's connections are in autocommit: the BEGIN and the COMMIT are ours, each
            # sent with the statements beside it as one simple query bound on the client (one
            # round trip and one message to read, not three and two: on a busy machine each round
            # trip waits its turn on both sides, and each statement costs the worker's one core).
            # The values bound are the group, topic, partition, offsets and counters, quoted by
            # psycopg; the records' values go as parameters, in `_apply`.
            try:
                cur = psycopg.AsyncClientCursor(conn)
                key = (self.group, topic, partition)
                await cur.execute(BEGIN_AND_LOCK, (*self.pool.local.params, *ledger.lock_params(*key)))
                if conn.info.transaction_status != INTRANS:  # never without a BEGIN: autocommit
                    raise RuntimeError(f"no transaction after BEGIN ({conn.info.transaction_status.name})")
                for _ in range(BEGIN_AND_LOCK_RESULTS - 1):
                    if not cur.nextset():
                        raise RuntimeError(f"fewer than {BEGIN_AND_LOCK_RESULTS} results from the transaction's start")
                position = await ledger.locked(cur)
                result, counts = await self._apply(conn, batch, position, isolate)
                if counts is None:
                    await cur.execute(COMMIT)
                else:
                    await cur.execute(ADVANCE_AND_COMMIT, ledger.advance_params(*key, batch.last_offset, **counts))
                    if not cur.nextset():
                        raise RuntimeError("no COMMIT result after the ledger's advance")
                if cur.statusmessage != "COMMIT":
                    # A COMMIT of a transaction that had failed answers ROLLBACK, not an error.
                    raise TransientSinkError(f"the transaction ended in {cur.statusmessage} at its COMMIT")
            except BaseException as exc:
                await _rollback(conn, exc)
                raise
        return result

    async def _apply(
        self, conn: psycopg.AsyncConnection, batch: Batch[Any], position: ledger.Position, isolate: bool
    ) -> tuple[WriteResult[Any], dict[str, int] | None]:
        """What the batch does under the ledger's lock, and the ledger's counters to add (None:
        the batch was applied before, nothing to advance)."""
        topic, partition = batch.topic, batch.partition
        await self._check_log(conn, batch, position)
        last = position.last_offset
        lost = claims.check_follows(batch, last)
        result: WriteResult[Any] = WriteResult(topic, partition, last, max(last, batch.last_offset))
        if batch.last_offset <= last:
            result.redelivered = len(batch)
            return result, None

        fresh = [r for r in batch.records if r.offset > last]
        dead = [d for d in batch.rejected if d.offset > last]
        cached = [c for c in batch.cached if c.record.offset > last]
        confirmed = sum(1 for c in cached if c.committed_at <= last)
        if confirmed < len(cached):
            # The cache saw these keys committed past today's ledger: that transaction is
            # no longer in the database, so neither may be their rows.
            fresh.extend(c.record for c in cached if c.committed_at > last)
            fresh.sort(key=lambda r: r.offset)
            result.cache_misses = len(cached) - confirmed
        result.cached_duplicates = confirmed
        result.redelivered = len(batch) - len(dead) - len(cached) - sum(1 for r in batch.records if r.offset > last)

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
            await self.on_dead_letters(dead, conn)
        if lost is not None:
            await ledger.record_lost(conn, self.group, topic, partition, lost.first, lost.last, "retention")
            result.lost = lost.last - lost.first + 1
        counts = {
            "events": result.events,
            "rows_applied": len(result.applied),
            "duplicates": len(result.duplicates) + confirmed,
            "dead_letters": len(dead),
            "superseded": result.superseded,
            "lost": result.lost,
        }
        return result, counts

    async def _check_log(self, conn: psycopg.AsyncConnection, batch: Batch[Any], position: ledger.Position) -> None:
        """Refuse another log than the ledger's; teach the ledger which log it counts."""
        now, topic, partition = batch.identity, batch.topic, batch.partition
        if now.topic_id is not None and position.topic_id is not None and now.topic_id != position.topic_id:
            raise LogChanged(topic, partition, "topic id", position.topic_id, now.topic_id)
        if now.cluster_id is not None and position.cluster_id is not None and now.cluster_id != position.cluster_id:
            raise LogChanged(topic, partition, "cluster", position.cluster_id, now.cluster_id)
        if (now.topic_id is not None and position.topic_id is None) or (
            now.cluster_id is not None and position.cluster_id is None
        ):
            await ledger.identify(conn, self.group, topic, partition, now.topic_id, now.cluster_id)

    async def _one_by_one(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, records: Sequence[Record[Any]]
    ) -> Outcome:
        outcome = Outcome()
        await self.writer.prepare(conn, records)  # the locks the records will take, in one order
        order = (lambda r: r.offset) if self.writer.ordered else _sort_key
        for record in sorted(records, key=order):
            try:
                async with conn.transaction():
                    one = await self.writer.upsert_one(conn, topic, partition, record)
            except Exception as exc:
                if is_transient(exc) or is_bug(exc):
                    raise
                outcome.rejected[record.offset] = (Reason.DB_REJECTED, describe(exc))
                continue
            outcome.applied |= one.applied
            outcome.rejected.update(one.rejected)
            outcome.superseded |= one.superseded
        return outcome


# The transaction's start and its end, each one simple query (see the module's docstring): per
# transaction, the worker spent 0.81 ms of CPU on them as five statements in two pipelines and
# 0.44 ms this way, the server 0.63 and 0.46 (bench/RESULTS.md, seventh round).
BEGIN_AND_LOCK = ";\n".join(["BEGIN", APPLY.strip(), ledger.CREATE_AND_LOCK])
BEGIN_AND_LOCK_RESULTS = 2 + ledger.CREATE_AND_LOCK_RESULTS  # the BEGIN's, the settings', then the lock's
ADVANCE_AND_COMMIT = ledger.ADVANCE.strip() + ";\nCOMMIT"
COMMIT = b"COMMIT"
IDLE, INTRANS = psycopg.pq.TransactionStatus.IDLE, psycopg.pq.TransactionStatus.INTRANS


async def _rollback(conn: psycopg.AsyncConnection, exc: BaseException) -> None:
    """End the failed transaction, or close the connection (the pool discards a closed one)
    where it cannot be trusted: an interrupted write (a cancellation can leave psycopg between
    two states), one left in pipeline mode (no statement of ours uses it now; a writer's might),
    one whose ROLLBACK failed.
    As in psycopg's own `Transaction`, nothing here hides the error that failed the batch."""
    if conn.closed:
        return
    if not isinstance(exc, Exception) or conn.info.pipeline_status != psycopg.pq.PipelineStatus.OFF:
        await conn.close()
        return
    if conn.info.transaction_status == IDLE:
        return
    try:
        await conn.rollback()
    except Exception:
        await conn.close()
        return
    if conn.info.transaction_status != IDLE:
        await conn.close()


def _halves(batch: Batch[Any]) -> tuple[Batch[Any], Batch[Any]]:
    """The batch cut at its middle record into two consecutive batches. Each claims what concerns
    its own offsets (`sinks.core.claims`): the first keeps the lost range and the holes before its
    last record; the second starts at its first record, with the holes from the first's last
    record on (one between the halves is then checked against the ledger the first committed)."""
    held = claims.offsets(batch)
    mid, start = held[len(held) // 2 - 1], held[len(held) // 2]
    first: Batch[Any] = Batch(
        batch.topic, batch.partition, batch.first_offset, mid, lost=batch.lost, identity=batch.identity,
        holes=tuple(h for h in batch.holes if h.before <= mid),
    )  # fmt: skip
    second: Batch[Any] = Batch(
        batch.topic, batch.partition, start, batch.last_offset, identity=batch.identity,
        holes=tuple(h for h in batch.holes if h.after >= mid),
    )  # fmt: skip
    for part, keep in ((first, lambda o: o <= mid), (second, lambda o: o > mid)):
        part.records = [r for r in batch.records if keep(r.offset)]
        part.rejected = [d for d in batch.rejected if keep(d.offset)]
        part.cached = [c for c in batch.cached if keep(c.record.offset)]
    return first, second


def _merged(a: WriteResult[Any], b: WriteResult[Any]) -> WriteResult[Any]:
    """The result of a batch written as two consecutive halves."""
    return WriteResult(
        a.topic,
        a.partition,
        a.ledger_before,
        b.ledger_after,
        redelivered=a.redelivered + b.redelivered,
        applied=a.applied + b.applied,
        duplicates=a.duplicates + b.duplicates,
        cached_duplicates=a.cached_duplicates + b.cached_duplicates,
        cache_misses=a.cache_misses + b.cache_misses,
        dead_letters=a.dead_letters + b.dead_letters,
        superseded=a.superseded + b.superseded,
        lost=a.lost + b.lost,
    )


def _sort_key(record: Record[Any]) -> tuple:
    event = record.event
    return (str(getattr(event, "tenant_id", "")), str(getattr(event, "dedupe_id", "")), record.offset)
