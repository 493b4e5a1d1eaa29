"""From Faust's stream to one sink transaction per (topic, partition) batch.

The agent hands over chunks of events; each partition accumulates its own batch, flushed when
it reaches `batch_size` or its oldest record waited `max_wait_s`. A partition has at most one
batch in flight, so its transactions commit in offset order; different partitions write
concurrently (up to the pool size). Nothing raised by the database escapes: a batch is retried
with capped exponential backoff until it commits, and while it is retried the partition's next
batch waits, the agent stops pulling, and Faust stops fetching once its buffer is full.

Faust's acks are not used: the offsets ledger decides where a partition resumes (see
`streams.worker.faust_internals`), events buffered when a worker dies are simply delivered again, and
Kafka's committed offsets are set from the ledger after each commit (for monitoring).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from pydantic import BaseModel
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from schemas.codec import Decoded, decode, dedupe_digest
from schemas.deadletter import DeadLetter
from sinks.core.batch import Batch, Record, WriteResult
from sinks.core.sink import Sink
from sinks.errors import OffsetGap, TransientSinkError
from streams import logs
from streams.worker import telemetry
from streams.worker.dedupe import DedupeIndex

log = logs.get(__name__)


@dataclass(slots=True)
class _Entry:
    offset: int
    item: Record[Any] | DeadLetter
    digest: bytes | None


@dataclass
class _Partition:
    buffer: list[_Entry] = field(default_factory=list)
    first_at: float | None = None
    inflight: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # After a repositioning seek: records above this offset are stale deliveries.
    expect: int | None = None
    expect_since: float = 0.0

    def busy(self) -> bool:
        return self.lock.locked() or (self.inflight is not None and not self.inflight.done())


def _headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    if not raw:
        return ()
    if isinstance(raw, dict):
        return tuple(raw.items())
    return tuple((k, v) for k, v in raw)


class Pipeline:
    def __init__(
        self,
        *,
        topic: str,
        model: type[BaseModel],
        sink: Sink,
        dedupe: DedupeIndex,
        reposition: Callable[[int, int], Awaitable[None]],
        first_offset_from: Callable[[int, int], Awaitable[int]],
        batch_size: int,
        max_wait_s: float,
        max_inflight: int,
        retry_initial_s: float,
        retry_max_s: float,
        drain_timeout_s: float,
        progress_log_s: float = 30.0,
        decode_context: dict[str, Any] | None = None,
        labelled_tenants: frozenset[UUID] = frozenset(),
    ) -> None:
        self.topic = topic
        self.model = model
        self.sink = sink
        self.dedupe = dedupe
        self.reposition = reposition
        self.first_offset_from = first_offset_from
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.drain_timeout_s = drain_timeout_s
        self.progress_log_s = progress_log_s
        self.decode_context = decode_context or None
        self.labelled_tenants = labelled_tenants
        # Next offset to apply per partition, as of this worker's last commit (for lag gauges).
        self.applied: dict[int, int] = {}
        self._progress_at = time.monotonic()
        self._progress_last: dict[str, int] = {}
        self._slots = asyncio.Semaphore(max_inflight)
        self._parts: dict[int, _Partition] = {}
        self._owned: set[int] | None = None
        self._stopping = False
        self._deadline = float("inf")
        self._m_consumed = telemetry.EVENTS_CONSUMED.labels(topic)
        self._m_applied = telemetry.ROWS_APPLIED.labels(topic)
        self._m_dup_table = telemetry.DUPLICATES.labels(topic, "table")
        self._m_dup_db = telemetry.DUPLICATES.labels(topic, "database")
        self._m_replayed = telemetry.REPLAYED.labels(topic)
        self._m_stale = telemetry.STALE_DROPPED.labels(topic)
        self._m_batch = telemetry.BATCH_SIZE.labels(topic)
        self._m_upsert = telemetry.UPSERT_SECONDS.labels(topic)
        self._m_last_commit = telemetry.LAST_COMMIT.labels(topic)
        self._m_keys = telemetry.DEDUPE_KEYS.labels(topic)
        self._m_superseded = telemetry.SUPERSEDED.labels(topic)
        # Told (partition, next offset) after each commit: Kafka's offsets follow the ledger.
        self.on_commit: Callable[[int, int], None] | None = None
        self.totals = {
            "consumed": 0,
            "applied": 0,
            "duplicates_table": 0,
            "duplicates_db": 0,
            "dead_letters": 0,
            "replayed": 0,
            "stale": 0,
            "superseded": 0,
        }

    # -- intake -----------------------------------------------------------------------------

    async def ingest(self, messages: Sequence[Any]) -> None:
        """Decode a chunk of Faust messages into their partitions' batches."""
        model, topic, owned, context = self.model, self.topic, self._owned, self.decode_context
        parts = self._parts
        now = time.monotonic()
        self._m_consumed.inc(len(messages))
        self.totals["consumed"] += len(messages)
        for msg in messages:
            p, offset = msg.partition, msg.offset
            if owned is not None and p not in owned:
                self._stale(1)
                continue
            st = parts.get(p)
            if st is None:
                st = parts[p] = _Partition()
            if st.expect is not None:
                if offset > st.expect:
                    self._stale(1)
                    continue
                st.expect = None
            buffer = st.buffer
            if buffer and offset != buffer[-1].offset + 1:
                log.debug(
                    "non-contiguous delivery", topic=topic, partition=p, previous=buffer[-1].offset, offset=offset
                )
                if offset <= buffer[-1].offset:
                    # The partition was sought back: everything from here on comes again.
                    buffer[:] = [e for e in buffer if e.offset < offset]
                else:
                    # A hole: records in between were not delivered. A batch never spans one:
                    # ending it here makes the next batch start past the ledger, where the sink
                    # refuses it unless the broker confirms nothing exists in between.
                    await self._flush(p)
                    buffer = st.buffer
            key, value = msg.key, msg.value
            decoded = telemetry.count_unknown_fields(topic, decode(value, model, key, context))
            if isinstance(decoded, Decoded):
                ev = decoded.event
                record = Record(offset, ev, key, value, _headers(msg.headers))
                buffer.append(_Entry(offset, record, dedupe_digest(ev.tenant_id, ev.dedupe_id)))  # type: ignore[attr-defined]
            else:
                dead = DeadLetter(decoded.reason, decoded.detail, topic, p, offset, key, value, _headers(msg.headers))
                buffer.append(_Entry(offset, dead, None))
            if st.first_at is None:
                st.first_at = now
            if len(buffer) >= self.batch_size:
                await self._flush(p)

    def _stale(self, n: int) -> None:
        self._m_stale.inc(n)
        self.totals["stale"] += n

    def on_assigned(self, partitions: set[int]) -> None:
        self._owned = set(partitions)

    def on_revoked(self, partitions: set[int]) -> None:
        """Forget what is buffered for partitions this worker no longer owns.

        A batch already in flight is left to finish: the ledger row lock and offset filter make
        a late commit harmless to the partition's new owner.
        """
        if self._owned is not None:
            self._owned -= partitions
        for p in partitions:
            st = self._parts.get(p)
            if st is not None:
                self._stale(len(st.buffer))
                st.buffer.clear()
                st.first_at = None
                st.expect = None
        self.dedupe.forget(partitions)

    # -- flushing ---------------------------------------------------------------------------

    async def _flush(self, p: int) -> None:
        st = self._parts[p]
        async with st.lock:
            if st.inflight is not None and not st.inflight.done():
                # asyncio.wait, not await: cancelling this caller must not cancel the batch.
                await asyncio.wait({st.inflight})
            if not st.buffer:
                return
            entries, st.buffer, st.first_at = st.buffer, [], None
            st.inflight = asyncio.create_task(self._write(p, entries), name=f"flush {self.topic}[{p}]")
            st.inflight.add_done_callback(self._report_crash)

    def _report_crash(self, task: asyncio.Task[None]) -> None:
        # A flush task must never die silently: its partition would stall without a word.
        if not task.cancelled() and task.exception() is not None:
            log.error("batch task crashed", task=task.get_name(), exc_info=task.exception())

    async def tick(self) -> None:
        """Flush batches that waited long enough; called periodically by the agent."""
        now = time.monotonic()
        if now - self._progress_at >= self.progress_log_s and self.totals != self._progress_last:
            self._progress_at, self._progress_last = now, dict(self.totals)
            log.info("progress", topic=self.topic, buffered=self.buffered, **self.totals)
        for p, st in list(self._parts.items()):
            if st.buffer and st.first_at is not None and now - st.first_at >= self.max_wait_s and not st.busy():
                await self._flush(p)
            elif st.expect is not None and now - st.expect_since > 15.0 and not st.busy():
                # The repositioning seek did not bring the expected record: ask again.
                log.warning("repositioning again", topic=self.topic, partition=p, offset=st.expect)
                st.expect_since = now
                await self._reposition_from_ledger(p)

    async def drain(self) -> None:
        """Flush everything buffered and wait for it to commit, for at most the drain timeout."""
        self._stopping = True
        self._deadline = time.monotonic() + self.drain_timeout_s
        for p in list(self._parts):
            await self._flush(p)
        pending = {st.inflight for st in self._parts.values() if st.inflight and not st.inflight.done()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=max(0.0, self._deadline - time.monotonic()) + 1.0)
            for task in late:
                task.cancel()
        log.info("drained", topic=self.topic, **self.totals)

    @property
    def buffered(self) -> int:
        return sum(len(st.buffer) for st in self._parts.values())

    # -- one batch --------------------------------------------------------------------------

    async def _write(self, p: int, entries: list[_Entry]) -> None:
        async with self._slots:
            if self.dedupe.enabled and not self.dedupe.loaded(p):
                await self._load_dedupe(p)
            batch, digests = self._build(p, entries)
            started = time.perf_counter()
            result = await self._apply(batch)
            if result is not None:
                self._committed(batch, result, digests, time.perf_counter() - started)
                if self.on_commit is not None:
                    self.on_commit(p, result.ledger_after + 1)

    async def _load_dedupe(self, p: int) -> None:
        """Load the fast path of a partition as of the ledger. Without the database, go without
        it for this batch: the database dedupes anyway, and the next batch tries again."""
        try:
            ledger = await self.sink.positions(self.topic)
        except Exception as exc:
            log.debug("dedupe index not loaded yet", topic=self.topic, partition=p, error=str(exc))
            return
        self.dedupe.load(p, ledger.get(p, -1))

    def _build(self, p: int, entries: list[_Entry]) -> tuple[Batch[Any], dict[int, bytes]]:
        batch: Batch[Any] = Batch(self.topic, p, entries[0].offset, entries[-1].offset)
        digests: dict[int, bytes] = {}
        contains = self.dedupe.contains if self.dedupe.enabled else None
        for e in entries:
            item = e.item
            if isinstance(item, DeadLetter):
                batch.rejected.append(item)
            elif contains is not None and contains(p, e.digest):  # type: ignore[arg-type]
                batch.known_duplicates.append(e.offset)
            else:
                batch.records.append(item)
                digests[e.offset] = e.digest  # type: ignore[assignment]
        return batch, digests

    async def _apply(self, batch: Batch[Any]) -> WriteResult[Any] | None:
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda exc: isinstance(exc, Exception)),
            wait=wait_exponential_jitter(
                initial=self.retry_initial_s, max=self.retry_max_s, jitter=self.retry_initial_s
            ),
            stop=self._give_up,
            before_sleep=self._log_retry(batch),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(batch)
        except Exception as exc:
            log.error(
                "batch abandoned at shutdown; the ledger will have it delivered again",
                topic=self.topic,
                partition=batch.partition,
                first_offset=batch.first_offset,
                last_offset=batch.last_offset,
                error=str(exc),
            )
        return None

    async def _attempt(self, batch: Batch[Any]) -> WriteResult[Any] | None:
        try:
            return await self.sink.write(batch)
        except OffsetGap as gap:
            if await self._gap_is_legitimate(batch, gap):
                batch.gap_verified = True
                return await self.sink.write(batch)
            return None

    def _give_up(self, state: RetryCallState) -> bool:
        return self._stopping and time.monotonic() >= self._deadline

    def _log_retry(self, batch: Batch[Any]) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            kind = "transient" if isinstance(exc, TransientSinkError) else "unexpected"
            telemetry.BATCH_RETRIES.labels(self.topic, kind).inc()
            wait = state.next_action.sleep if state.next_action else 0.0
            fields = dict(
                topic=self.topic,
                partition=batch.partition,
                first_offset=batch.first_offset,
                attempt=state.attempt_number,
                retry_in_s=round(wait, 2),
                error=str(exc),
            )
            if kind == "transient":
                log.warning("batch not committed; retrying", **fields)
            else:
                log.error("batch failed unexpectedly; retrying", exc_info=exc, **fields)

        return before_sleep

    async def _gap_is_legitimate(self, batch: Batch[Any], gap: OffsetGap) -> bool:
        """Ask the broker whether anything exists between the ledger and the batch.

        Nothing (compaction, transaction markers, retention): the batch may be applied. Some
        records: this worker was positioned past them; seek back to the ledger and drop what
        was fetched from the wrong position.
        """
        p = batch.partition
        first = await self.first_offset_from(p, gap.expected)
        if first >= batch.first_offset:
            telemetry.OFFSET_GAPS.labels(self.topic, "verified").inc()
            log.warning(
                "offset gap has no records in it; applying",
                topic=self.topic,
                partition=p,
                expected=gap.expected,
                first_offset=batch.first_offset,
            )
            return True
        telemetry.OFFSET_GAPS.labels(self.topic, "repositioned").inc()
        log.error(
            "batch would skip records; repositioning from the ledger",
            topic=self.topic,
            partition=p,
            expected=gap.expected,
            first_offset=batch.first_offset,
            next_available=first,
        )
        st = self._parts[p]
        self._stale(len(st.buffer) + len(batch))
        st.buffer.clear()
        st.first_at = None
        st.expect, st.expect_since = first, time.monotonic()
        await self.reposition(p, gap.expected)
        return False

    async def _reposition_from_ledger(self, p: int) -> None:
        try:
            ledger = await self.sink.positions(self.topic)
            await self.reposition(p, ledger.get(p, -1) + 1)
        except Exception as exc:
            log.warning("could not reposition", topic=self.topic, partition=p, error=str(exc))

    def _committed(
        self, batch: Batch[Any], result: WriteResult[Any], digests: dict[int, bytes], seconds: float
    ) -> None:
        if self.dedupe.enabled:
            keys = [digests[r.offset] for r in result.in_database if r.offset in digests]
            self.dedupe.remember(batch.partition, batch.first_offset, batch.last_offset, keys)
            self._m_keys.set(len(self.dedupe))
        applied, db_dups = len(result.applied), len(result.duplicates)
        self._m_applied.inc(applied)
        self._m_dup_db.inc(db_dups)
        self._m_dup_table.inc(result.known_duplicates)
        self._m_replayed.inc(result.replayed)
        self._m_batch.observe(len(batch))
        self._m_upsert.observe(seconds)
        self._m_last_commit.set_to_current_time()
        telemetry.LEDGER_OFFSET.labels(self.topic, str(batch.partition)).set(result.ledger_after)
        self.applied[batch.partition] = result.ledger_after + 1
        if self.labelled_tenants:
            for record in result.applied:
                tenant = record.event.tenant_id
                if tenant in self.labelled_tenants:
                    telemetry.TENANT_ROWS.labels(self.topic, str(tenant)).inc()
        t = self.totals
        t["applied"] += applied
        t["duplicates_db"] += db_dups
        t["duplicates_table"] += result.known_duplicates
        t["dead_letters"] += len(result.dead_letters)
        t["replayed"] += result.replayed
        t["superseded"] += result.superseded
        self._m_superseded.inc(result.superseded)
        log.debug(
            "batch committed",
            topic=self.topic,
            partition=batch.partition,
            first_offset=batch.first_offset,
            last_offset=batch.last_offset,
            applied=applied,
            duplicates=db_dups + result.known_duplicates,
            dead_letters=len(result.dead_letters),
            replayed=result.replayed,
            seconds=round(seconds, 4),
        )
