"""From the agent's chunks of records to one sink transaction per (topic, partition) batch.

Each partition has its own buffer and its own writer task. The agent decodes every record into
its partition's buffer and never waits for a database; a partition's task takes a batch as soon
as it is free and holds one of the `max_inflight` write slots: what is buffered, up to
`batch_size` records (adaptive: what arrived while the previous batch was written makes the
next; with `max_wait_s` > 0 it first waits that long for `batch_size`), and applies it with
`Sink.write`. A partition has one batch in flight at a time, so its transactions commit in
offset order; partitions write concurrently, up to `max_inflight`.

What can go wrong stays with the partition it happens to:
- a transient failure (database down, timeout, broker refusing a dead letter) retries the same
  batch with capped exponential backoff, for as long as it takes; meanwhile the partition's
  buffer fills, and past `hold_records` the partition alone is paused in Kafka (the others go
  on) until its batch commits. Its `stalled` seconds grow, exported and alerted on;
- a batch that would skip records (`OffsetGap`) asks the broker what lies in between: nothing
  (markers, compaction) and it is applied; records, and the partition is sought back to the
  ledger; offsets the broker no longer has (retention) are data loss: by default the partition
  stops (`blocked`, alerted on), or with `on_data_loss="skip"` the loss is recorded in the
  ledger and the partition goes on;
- a batch of another log than the ledger's (`LogChanged`: the topic was recreated) stops the
  partition until an operator decides (`eventsink ledger reset`);
- anything unexpected that ends a partition's task is a bug: `on_crash` is told, and the worker
  exits non-zero so that its supervisor restarts it from the ledger.

Faust's acks are not used: the ledger decides where a partition resumes (`positioning`), records
buffered when a worker dies are simply delivered again, and Kafka's committed offsets are set
from the ledger after each commit (`on_commit`, for monitoring).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from uuid import UUID

from pydantic import BaseModel
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from schemas.codec import Decoded, Rejected, decode, dedupe_digest
from schemas.deadletter import DeadLetter
from sinks.core.batch import Batch, LogIdentity, Record, WriteResult
from sinks.core.ledger import next_offset
from sinks.core.sink import Sink
from sinks.errors import LogChanged, OffsetGap, TransientSinkError
from streams import logs
from streams.worker import batches, holes, telemetry
from streams.worker.batches import Entry
from streams.worker.budget import DEFAULT_BUDGET_BYTES, Budget, record_bytes
from streams.worker.cursor import Cursor, Step
from streams.worker.dedupe_cache import DedupeCache

log = logs.get(__name__)


class PartitionControl(Protocol):
    """What a pipeline needs of the consumer and the broker, for the partitions of its topic."""

    def hold(self, partition: int) -> None:
        """Stop fetching the partition (Kafka's pause) until `release`."""

    def release(self, partition: int) -> None: ...

    async def seek(self, partition: int, offset: int) -> None:
        """Make `offset` the next record delivered."""

    def log_gap(self, partition: int, previous: int, offset: int) -> bool:
        """Whether the hole between two delivered records is a hole in the broker's log."""

    def identity(self) -> LogIdentity:
        """Which log the topic's records come from now (ids None when unknown)."""

    async def first_offset_from(self, partition: int, offset: int) -> tuple[int, int]:
        """(offset of the first record at or after `offset`, the partition's log start offset)."""

    def end_offset(self, partition: int) -> int | None:
        """The partition's end offset as last fetched (None when unknown)."""


@dataclass(frozen=True)
class PipelineConfig:
    batch_size: int
    max_wait_s: float
    max_inflight: int
    retry_initial_s: float
    retry_max_s: float
    drain_timeout_s: float
    # Buffered records, or bytes, above which a partition's fetching is paused (its batch is slow
    # or retried).
    hold_records: int
    hold_bytes: int = 16 * 1024 * 1024
    on_data_loss: Literal["stop", "skip"] = "stop"
    progress_log_s: float = 30.0
    labelled_tenants: frozenset[UUID] = frozenset()


@dataclass(eq=False)
class _Partition:
    number: int
    buffer: list[Entry] = field(default_factory=list)
    nbytes: int = 0  # what the buffer weighs
    first_at: float | None = None  # when the oldest buffered record arrived
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    writing: bool = False
    slot: bool = False  # holds one of the pipeline's write slots for its next attempt
    cursor: Cursor = field(default_factory=Cursor)  # where its deliveries stand
    held: bool = False
    # The buffer holds a hole nothing verified: what precedes it is written without waiting.
    cut: bool = False
    revoked: bool = False
    blocked: str | None = None
    blocked_until: int | None = None
    # Records of a stopped partition below this offset are still applied (they precede what
    # stopped it): those buffered when it stopped, and those of the same fetch ingested after.
    keep_before: int | None = None
    # When the ledger last advanced, or records started waiting after an idle spell.
    progress_at: float = field(default_factory=time.monotonic)

    def waiting(self) -> bool:
        return bool(self.buffer) or self.writing


def _headers(raw: Any) -> tuple[tuple[str, bytes | None], ...]:
    if not raw:
        return ()
    if type(raw) is tuple:  # aiokafka's own: a tuple of (key, value) pairs
        return raw
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
        cache: DedupeCache,
        control: PartitionControl,
        config: PipelineConfig,
        decode_context: dict[str, Any] | None = None,
        # The kind's decoder (`streams.kinds.Kind.decode`: `decode` itself for value format json).
        decoder: Callable[..., Decoded[Any] | Rejected] = decode,
        on_crash: Callable[[BaseException], Awaitable[None]] | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.topic = topic
        self.model = model
        self.sink = sink
        self.cache = cache
        self.control = control
        self.config = config
        self.decode_context = decode_context or None
        self.decoder = decoder
        self.on_crash = on_crash
        self.budget = budget or Budget(DEFAULT_BUDGET_BYTES)
        # Told (partition, next offset) after each commit: Kafka's offsets follow the ledger.
        self.on_commit: Callable[[int, int], None] | None = None
        # Next offset to apply per partition, as of this worker's last commit (for lag gauges).
        self.applied: dict[int, int] = {}
        self.crashed: BaseException | None = None
        self._slots = asyncio.Semaphore(config.max_inflight)
        self._parts: dict[int, _Partition] = {}
        self._owned: set[int] | None = None
        self._stopping = False
        self._deadline = float("inf")
        self._progress_at = time.monotonic()
        self._progress_last: dict[str, int] = {}
        self._drained_totals: dict[str, int] | None = None  # what the last "drained" line said
        self._m_consumed = telemetry.EVENTS_CONSUMED.labels(topic)
        self._m_applied = telemetry.ROWS_APPLIED.labels(topic)
        self._m_dup_cache = telemetry.DUPLICATES.labels(topic, "cache")
        self._m_dup_db = telemetry.DUPLICATES.labels(topic, "database")
        self._m_redelivered = telemetry.REDELIVERED.labels(topic)
        self._m_stale = telemetry.STALE_DROPPED.labels(topic)
        self._m_batch = telemetry.BATCH_SIZE.labels(topic)
        self._m_upsert = telemetry.UPSERT_SECONDS.labels(topic)
        self._m_last_commit = telemetry.LAST_COMMIT.labels(topic)
        self._m_keys = telemetry.DEDUPE_KEYS.labels(topic)
        self._m_superseded = telemetry.SUPERSEDED.labels(topic)
        self._m_log_gaps = telemetry.LOG_GAPS.labels(topic)
        self.totals = {
            "consumed": 0,
            "applied": 0,
            "duplicates_cache": 0,
            "duplicates_db": 0,
            "dead_letters": 0,
            "redelivered": 0,
            "stale": 0,
            "superseded": 0,
            "lost": 0,
        }

    # -- intake -------------------------------------------------------------------------------

    def ingest(self, fetches: Sequence[Any]) -> None:
        """Decode fetched records into their partitions' buffers (never waits).

        `fetches`: each the records of one partition from one fetch (`partition`, `records`:
        objects with `offset`, `key`, `value`, `headers`), as `faust_internals.Fetched`.
        """
        for fetch in fetches:
            records = fetch.records
            self._m_consumed.inc(len(records))
            self.totals["consumed"] += len(records)
            p = fetch.partition
            owned = self._owned
            st = self._parts.get(p)
            if st is not None and st.blocked is not None and st.keep_before is not None:
                late = [r for r in records if r.offset >= st.keep_before]
                if late:
                    self._stale(len(late), sum(map(record_bytes, late)))
                    records = [r for r in records if r.offset < st.keep_before]
            if (
                self._stopping  # drained: what comes now is read again by the next owner
                or (owned is not None and p not in owned)
                or (st is not None and st.blocked is not None and st.keep_before is None)
            ):
                self._stale(len(records), sum(map(record_bytes, records)))
                continue
            if not records:
                continue
            if st is None:
                st = self._open(p)
            self._ingest(st, records)

    def _ingest(self, st: _Partition, records: Sequence[Any]) -> None:
        model, topic, context, decode = self.model, self.topic, self.decode_context, self.decoder
        batch_size, hold_records = self.config.batch_size, self.config.hold_records
        p, buffer, cursor = st.number, st.buffer, st.cursor
        now = time.monotonic()
        cursor.delivered_at = now
        for record in records:
            offset = record.offset
            nbytes = record_bytes(record)
            hole_after: int | None = None
            unverified = False
            previous = cursor.previous
            if cursor.expect is None and previous is not None and offset == previous + 1:
                cursor.previous = offset  # `Cursor.step`'s NEXT, inline: nearly every record
            elif (step := cursor.step(offset)) is not Step.NEXT:
                if step is Step.STALE:
                    self._stale(1, nbytes)
                    continue
                if step is Step.BACK:
                    # The partition was sought back: everything from here on comes again.
                    self._drop(st, [e for e in buffer if e.offset >= offset])
                    buffer[:] = [e for e in buffer if e.offset < offset]
                elif self.control.log_gap(p, cursor.before, offset):  # type: ignore[arg-type]
                    hole_after = cursor.before
                    self._m_log_gaps.inc()
                else:
                    unverified = True
                    log.debug("hole in delivery", topic=topic, partition=p, previous=cursor.before, offset=offset)
            key, value, headers = record.key, record.value, _headers(record.headers)
            decoded = telemetry.count_unknown_fields(topic, decode(value, model, key, context))
            if isinstance(decoded, Decoded):
                ev = decoded.event
                entry = Entry(
                    offset,
                    Record(offset, ev, key, value, headers),
                    dedupe_digest(ev.tenant_id, ev.dedupe_id),  # type: ignore[attr-defined]
                    nbytes,
                    hole_after,
                    unverified,
                )
            else:
                dead = DeadLetter(decoded.reason, decoded.detail, topic, p, offset, key, value, headers)
                entry = Entry(offset, dead, None, nbytes, hole_after, unverified)
            if unverified and buffer:
                st.cut = True
            if not buffer:
                st.first_at = now
                if not st.writing:
                    st.progress_at = now
                st.wake.set()
            buffer.append(entry)
            st.nbytes += nbytes
            if len(buffer) == batch_size or unverified:
                st.wake.set()
        if not st.held and (len(buffer) >= hold_records or st.nbytes >= self.config.hold_bytes):
            st.held = True
            self.control.hold(p)

    def _open(self, p: int) -> _Partition:
        st = self._parts[p] = _Partition(p)
        st.task = asyncio.get_running_loop().create_task(self._run(st), name=f"partition {self.topic}[{p}]")
        return st

    def _stale(self, n: int, nbytes: int) -> None:
        """Records dropped, to come again (revoked, sought back, stopped): their bytes go back."""
        self._m_stale.inc(n)
        self.totals["stale"] += n
        self.budget.give(nbytes)

    def _drop(self, st: _Partition, entries: Sequence[Entry]) -> None:
        nbytes = sum(e.nbytes for e in entries)
        st.nbytes -= nbytes
        self._stale(len(entries), nbytes)

    def on_assigned(self, partitions: set[int]) -> None:
        self._owned = set(partitions)

    def claim(self, partitions: set[int]) -> set[int]:
        """Partitions the group's consumer is positioned on are this pipeline's, whatever the order
        in which the rebalance's steps ran: returns those it did not own (records of a partition
        not owned are dropped as stale, and nothing would apply it until the next rebalance)."""
        if self._owned is None:
            return set()
        missing = partitions - self._owned
        self._owned |= missing
        return missing

    def next_offset(self, p: int) -> int | None:
        """The offset a partition's next delivery should have, as its deliveries stand (None:
        not known, or the partition is stopped): where a `RebalanceReader` reads it from."""
        st = self._parts.get(p)
        if st is None or st.blocked is not None or st.revoked:
            return None
        cursor = st.cursor
        if cursor.expect is not None:
            return cursor.expect
        return None if cursor.previous is None else cursor.previous + 1

    def is_held(self, p: int) -> bool:
        st = self._parts.get(p)
        return st is not None and st.held

    def _empty(self, st: _Partition) -> None:
        """Drop what the partition buffered (its bytes go back): it comes again after a seek."""
        self._drop(st, st.buffer)
        st.buffer.clear()
        st.first_at = None
        st.cut = False

    def sought(self, p: int, offset: int | None) -> None:
        """A partition read through a rebalance is the group consumer's again, which delivers from
        `offset` (the ledger's; None: from where it stands): what was buffered from the other
        consumer is dropped, to come again. A batch in flight commits or not: the ledger decides."""
        st = self._parts.get(p)
        if st is None:
            return
        self._empty(st)
        if st.held:
            # The group's consumer may have been paused on it between the reader's `finish` and
            # now (Faust resumes a partition's stream before the ledger seek): released here, as
            # nothing else would release it once the buffer is gone.
            st.held = False
            self.control.release(p)
        if offset is None:
            st.cursor.lose_track()
        else:
            st.cursor.sought(offset)

    def on_revoked(self, partitions: set[int]) -> None:
        """Forget what is buffered for partitions this worker no longer owns.

        A batch already in flight is left to finish (its retries stop): the ledger row lock and
        offset filter make a late commit harmless to the partition's new owner.
        """
        if self._owned is not None:
            self._owned -= partitions
        for p in partitions:
            st = self._parts.pop(p, None)
            if st is not None:
                self._drop(st, st.buffer)
                st.buffer.clear()
                st.revoked = True
                st.wake.set()
                self._clear_block(st)
        self.cache.forget(partitions)

    # -- what operators see -------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return sum(len(st.buffer) for st in self._parts.values())

    def stalled(self) -> dict[int, float]:
        """Seconds each partition has had records waiting without its ledger advancing."""
        now = time.monotonic()
        return {p: (now - st.progress_at if st.waiting() else 0.0) for p, st in self._parts.items()}

    def blocked(self) -> dict[int, str]:
        """Partitions stopped until an operator acts, with the reason."""
        return {p: st.blocked for p, st in self._parts.items() if st.blocked is not None}

    def blocked_until(self, p: int) -> int | None:
        """The ledger offset at which a stopped partition may resume (None: a reset decides)."""
        st = self._parts.get(p)
        return st.blocked_until if st is not None else None

    def block(self, p: int, reason: str, detail: str, until: int | None = None, keep_before: int | None = None) -> None:
        """Stop a partition: nothing of it is applied or skipped until `unblock`. `until`: the
        offset the ledger must reach (an operator's `eventsink ledger skip`) to resume it.
        `keep_before`: buffered records below this offset are still applied (they precede what
        stopped the partition); the others are dropped, to come again after the operator."""
        st = self._parts.get(p) or self._open(p)
        st.blocked_until = until
        st.keep_before = keep_before
        if st.blocked == reason:
            return
        if st.blocked is not None:
            telemetry.PARTITION_BLOCKED.labels(self.topic, str(p), st.blocked).set(0)
        st.blocked = reason
        kept = [e for e in st.buffer if keep_before is not None and e.offset < keep_before]
        self._drop(st, [e for e in st.buffer if keep_before is None or e.offset >= keep_before])
        st.buffer[:] = kept
        if not kept:
            st.first_at = None
        st.cut = any(e.unverified_gap for e in kept[1:])
        if not st.held:
            st.held = True
            self.control.hold(p)
        telemetry.PARTITION_BLOCKED.labels(self.topic, str(p), reason).set(1)
        log.error(
            "partition stopped",
            topic=self.topic,
            partition=p,
            reason=reason,
            detail=detail,
            fix=self._fix(reason, p, detail),
        )

    def _fix(self, reason: str, p: int, detail: str) -> str:
        """What the operator does about a stopped partition (the other reasons' details say it)."""
        if reason == "log_changed":
            return (
                f"if {self.topic} was deleted and created again on purpose, start its new log: eventsink ledger reset "
                f"--topic {self.topic} --partition {p} (with --dry-run first); if not, check that "
                "KAFKA_BOOTSTRAP_SERVERS names the cluster the ledger counted"
            )
        return detail

    async def unblock(self, p: int, next_offset: int) -> None:
        """Resume a stopped partition from `next_offset` (the ledger's, after an operator's reset)."""
        st = self._parts.get(p)
        if st is None or st.blocked is None:
            return
        log.warning("partition resumed", topic=self.topic, partition=p, reason=st.blocked, offset=next_offset)
        self._clear_block(st)
        st.cursor.sought(next_offset)
        await self.control.seek(p, next_offset)
        st.held = False
        self.control.release(p)

    def _clear_block(self, st: _Partition) -> None:
        if st.blocked is not None:
            telemetry.PARTITION_BLOCKED.labels(self.topic, str(st.number), st.blocked).set(0)
            st.blocked = None
        st.keep_before = None

    # -- each partition's writer ----------------------------------------------------------------

    async def _run(self, st: _Partition) -> None:
        try:
            while not st.revoked:
                await self._ready(st)
                if st.revoked or not st.buffer:
                    if self._stopping:
                        return
                    continue
                # The batch is taken once a slot is free: records that arrive while the other
                # partitions' transactions hold every slot join it.
                await self._slots.acquire()
                st.slot = True
                if st.revoked or not st.buffer:
                    st.slot = False
                    self._slots.release()
                    continue
                entries = self._take(st)
                st.writing = True
                try:
                    await self._write(st, entries)
                finally:
                    st.writing = False
                    if st.slot:  # the batch failed before its first attempt
                        st.slot = False
                        self._slots.release()
                    self.budget.give(sum(e.nbytes for e in entries))
                    # The records leave memory as their bytes leave the budget, not when the next
                    # batch is taken (a partition may wait long for it).
                    del entries
                if (
                    st.held
                    and st.blocked is None
                    and len(st.buffer) < self.config.hold_records // 2
                    and st.nbytes < self.config.hold_bytes // 2
                ):
                    st.held = False
                    self.control.release(st.number)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.crashed = exc
            telemetry.PIPELINE_CRASHES.labels(self.topic).inc()
            log.error(
                "partition pipeline crashed",
                topic=self.topic,
                partition=st.number,
                exc_info=exc,
                fix="a bug: the worker restarts from the ledger, nothing is lost; report it with this traceback",
            )
            if self.on_crash is not None:
                await self.on_crash(exc)

    async def _ready(self, st: _Partition) -> None:
        """Until the partition has a batch to write (full, waited long enough, or stopping)."""
        max_wait = self.config.max_wait_s
        while not st.revoked:
            if st.buffer and (
                max_wait <= 0.0  # adaptive: write now; what arrives meanwhile fills the next batch
                or self._stopping
                or len(st.buffer) >= self.config.batch_size
                or st.cut
                or (st.first_at is not None and time.monotonic() - st.first_at >= max_wait)
            ):
                return
            if self._stopping:
                return
            if st.cursor.seek_overdue(self.SEEK_AGAIN_AFTER_S):
                # The seek did not bring the expected record: ask again.
                log.warning(
                    "seeking to the ledger again", topic=self.topic, partition=st.number, offset=st.cursor.expect
                )
                if not st.held:  # a pause nobody meant to keep would stop the seek's records too
                    self.control.release(st.number)
                await self._seek_to_ledger(st)
            elif self._starved(st):
                # Records exist past what was applied, yet none arrives: whatever lost them on
                # the way (a client or framework bug), the ledger knows where to resume.
                log.warning(
                    "no record arrives though the ledger is behind the partition's end; seeking to the ledger",
                    topic=self.topic,
                    partition=st.number,
                    end_offset=self.control.end_offset(st.number),
                    applied=self.applied.get(st.number),
                )
                st.cursor.reseek_starved(self.control.end_offset(st.number))
                await self._seek_to_ledger(st)
            st.wake.clear()
            timeout = max_wait if st.first_at is None else max(0.0, st.first_at + max_wait - time.monotonic())
            try:
                await asyncio.wait_for(st.wake.wait(), timeout if st.buffer else 5.0)
            except TimeoutError:
                pass

    SEEK_AGAIN_AFTER_S = 15.0
    STARVED_AFTER_S = 30.0

    def _starved(self, st: _Partition) -> bool:
        if st.buffer or st.writing or st.held or st.blocked is not None:
            return False
        end, applied = self.control.end_offset(st.number), self.applied.get(st.number)
        return st.cursor.starved(end, applied, self.STARVED_AFTER_S)

    def _take(self, st: _Partition) -> list[Entry]:
        """The next batch: up to batch_size records, never across a hole nothing verified."""
        buffer, limit = st.buffer, self.config.batch_size
        n = 1
        while n < len(buffer) and n < limit and not buffer[n].unverified_gap:
            n += 1
        entries = buffer[:n]
        del buffer[:n]
        st.nbytes -= sum(e.nbytes for e in entries)
        st.first_at = time.monotonic() if buffer else None
        st.cut = any(e.unverified_gap for e in buffer[1:])
        return entries

    async def _write(self, st: _Partition, entries: list[Entry]) -> None:
        p = st.number
        if self.cache.enabled and not self.cache.loaded(p):
            await self._load_cache(p)
        batch, digests = self._build(p, entries)
        started = time.perf_counter()
        result = await self._apply(st, batch)
        if result is not None:
            self._committed(st, batch, result, digests, time.perf_counter() - started)
            if self.on_commit is not None:
                self.on_commit(p, result.ledger_after + 1)

    def preload(self, ledger: dict[int, int]) -> None:
        """Load the dedupe cache of assigned partitions as of the ledger offsets read when they
        were assigned ({partition: last applied offset}), so that their first batch, the one a
        newly started worker waits for, need not read the ledger first (`_load_cache`)."""
        if self.cache.enabled:
            for p, last in ledger.items():
                if not self.cache.loaded(p):
                    self.cache.load(p, last)

    async def _load_cache(self, p: int) -> None:
        """Load a partition's dedupe cache as of the ledger. Without the database, go without
        it for this batch: the database dedupes anyway, and the next batch tries again."""
        try:
            ledger = await self.sink.positions(self.topic)
        except Exception as exc:
            log.debug("dedupe cache not loaded yet", topic=self.topic, partition=p, error=str(exc))
            return
        position = ledger.get(p)
        self.cache.load(p, position.last_offset if position else -1)

    def _build(self, p: int, entries: list[Entry]) -> tuple[Batch[Any], dict[int, bytes]]:
        committed_at = self.cache.committed_at if self.cache.enabled else None
        return batches.build(self.topic, p, entries, self.control.identity(), committed_at)

    # Attempts of one batch that may fail with something not transient before the partition's
    # pipeline gives up on it as a bug (`on_crash`: the worker restarts from the ledger).
    UNEXPECTED_ATTEMPTS = 5

    async def _apply(self, st: _Partition, batch: Batch[Any]) -> WriteResult[Any] | None:
        unexpected = 0

        def stop(state: RetryCallState) -> bool:
            nonlocal unexpected
            exc = state.outcome.exception() if state.outcome else None
            if not isinstance(exc, TransientSinkError):
                unexpected += 1
            return (
                st.revoked
                or (self._stopping and time.monotonic() >= self._deadline)
                or unexpected >= self.UNEXPECTED_ATTEMPTS
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_exponential_jitter(
                initial=self.config.retry_initial_s, max=self.config.retry_max_s, jitter=self.config.retry_initial_s
            ),
            stop=stop,
            # Not the batch: the retrying object and its call state refer to each other, so what
            # they hold lives until a full garbage collection, which a worker seldom does. Holding
            # the batch would keep its records (64 KiB messages: megabytes) out of the byte budget.
            before_sleep=self._log_retry(batch.partition, batch.first_offset),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(st, batch)
        except Exception as exc:
            if unexpected >= self.UNEXPECTED_ATTEMPTS and not st.revoked and not self._stopping:
                # Not transient, not a record's fault (the sink isolates those): a bug. Retrying it
                # forever would stall the partition; the worker restarts from the ledger instead.
                raise

            # Nothing is lost and nobody must act: the next owner of the partition starts at the ledger.
            (log.info if st.revoked else log.warning)(
                "batch abandoned (revoked or shutting down); the ledger will have it delivered again",
                topic=self.topic,
                partition=batch.partition,
                first_offset=batch.first_offset,
                last_offset=batch.last_offset,
                error=str(exc),
            )
            # What follows the abandoned batch cannot follow the ledger: it comes again too.
            self._empty(st)
            st.cursor.lose_track()
        return None

    # Times one batch may meet `OffsetGap` and have its hole resolved before the partition stops
    # (the broker and the ledger keep disagreeing: a bug, or another writer moving the ledger).
    GAP_RESOLUTIONS = 3

    async def _attempt(self, st: _Partition, batch: Batch[Any]) -> WriteResult[Any] | None:
        resolutions = 0
        while True:
            try:
                if not st.slot:  # the first attempt's was taken by `_run`
                    await self._slots.acquire()
                st.slot = False
                try:
                    return await self.sink.write(batch)
                finally:
                    self._slots.release()
            except OffsetGap as gap:
                if resolutions == self.GAP_RESOLUTIONS:
                    self._gap_unresolved(st, batch, gap)
                    return None
                resolutions += 1
                if not await self._resolve_gap(st, batch, gap):
                    return None
            except LogChanged as exc:
                self.block(st.number, "log_changed", str(exc))
                return None

    def _gap_unresolved(self, st: _Partition, batch: Batch[Any], gap: OffsetGap) -> None:
        """Stop the partition visibly rather than ask the broker again and again."""
        telemetry.OFFSET_GAPS.labels(self.topic, "unresolved").inc()
        self.block(
            st.number,
            "gap_unresolved",
            f"the broker says offsets {gap.expected}..{batch.first_offset - 1} hold nothing to apply, the ledger "
            f"refused the batch at {batch.first_offset} {self.GAP_RESOLUTIONS + 1} times; look at them "
            f"(eventsink tail, eventsink ledger show) and restart the worker, or go on without them: eventsink "
            f"ledger skip --topic {self.topic} --partition {st.number} --to {batch.first_offset - 1}",
            until=batch.first_offset - 1,
        )

    def _log_retry(self, partition: int, first_offset: int) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            kind = "transient" if isinstance(exc, TransientSinkError) else "unexpected"
            telemetry.BATCH_RETRIES.labels(self.topic, kind).inc()
            wait = state.next_action.sleep if state.next_action else 0.0
            fields = dict(
                topic=self.topic,
                partition=partition,
                first_offset=first_offset,
                attempt=state.attempt_number,
                retry_in_s=round(wait, 2),
                error=str(exc),
            )
            if kind == "transient":
                log.warning("batch not committed; retrying", **fields)
            else:
                log.error(
                    "batch failed unexpectedly; retrying",
                    exc_info=exc,
                    fix="a bug or a database answer eventsink does not know: after a few attempts the worker "
                    "restarts from the ledger, nothing is lost; report it with this traceback",
                    **fields,
                )

        return before_sleep

    # -- holes ----------------------------------------------------------------------------------

    async def behind(self, p: int, ledger_next: int, applied_before: int | None) -> None:
        """The periodic ledger check (`Positioning.check`): a partition whose ledger is behind
        what this worker committed (the database went back in time: a restore, a failover to a
        standby that missed commits) is sought back to the ledger, even if no record arrives to
        make a batch meet the gap: an idle partition would otherwise stay behind for ever.
        `applied_before` is what the worker had committed before the ledger was read."""
        st = self._parts.get(p)
        if st is None or st.revoked or st.writing or st.buffer or applied_before is None:
            return  # a batch on its way meets the gap itself (`_resolve_gap`)
        if self.applied.get(p) != applied_before or ledger_next >= applied_before:
            return
        self._went_back(p, ledger_next, found_by="the periodic ledger check")
        st.cursor.sought(ledger_next)
        await self.control.seek(p, ledger_next)

    def _went_back(self, p: int, ledger_next: int, found_by: str) -> None:
        """The ledger is behind what this worker committed: the database went back in time. Its
        cached keys past the ledger are forgotten and the partition resumes from the ledger."""
        log.warning(
            "ledger behind this worker's commits: was the database restored?",
            topic=self.topic,
            partition=p,
            ledger_next=ledger_next,
            committed_next=self.applied[p],
            found_by=found_by,
        )
        self.cache.forget([p])
        self.applied[p] = ledger_next

    async def _resolve_gap(self, st: _Partition, batch: Batch[Any], gap: OffsetGap) -> bool:
        """Ask the broker what lies between the ledger and the batch (`holes.find`). True: the
        batch may be written again with the claim found (the sink checks it against the ledger)."""
        p = batch.partition
        if gap.expected < self.applied.get(p, gap.expected):
            self._went_back(p, gap.expected, found_by="a batch")
        found = await holes.find(self.control.first_offset_from, p, gap.expected, batch.first_offset)
        where = {"topic": self.topic, "partition": p, "expected": gap.expected, "first_offset": batch.first_offset}
        if isinstance(found, holes.Lost):
            lost = found.lost
            telemetry.OFFSET_GAPS.labels(self.topic, "lost").inc()
            if self.config.on_data_loss == "stop":
                telemetry.RECORDS_LOST.labels(self.topic, str(p)).inc(lost.last - lost.first + 1)
                self.block(
                    p,
                    "data_lost",
                    f"offsets {lost.first}..{lost.last} were deleted by the broker (retention) before they were "
                    f"applied; to go on without them: eventsink ledger skip --topic {self.topic} --partition {p} "
                    f"--to {lost.last}",
                    until=lost.last,
                )
                return False
            log.error(
                "records lost to retention; recorded, going on",
                topic=self.topic,
                partition=p,
                offsets=(lost.first, lost.last),
                fix="the topic's retention deleted records before they were applied: keep it longer than workers "
                "may lag or stop (the loss is in eventsink.lost_ranges, `eventsink ledger show`)",
            )
            if found.seek_to is not None:
                self._seek_back(st, batch, found.seek_to)
                await self.control.seek(p, found.seek_to)
                return False
            batch.lost = lost
            if found.hole is not None:
                batch.holes += (found.hole,)
            return True
        if isinstance(found, holes.Empty):
            telemetry.OFFSET_GAPS.labels(self.topic, "verified").inc()
            log.warning("offset gap has no records in it; applying", **where)
            batch.holes += (found.hole,)
            return True
        first = found.first_available
        telemetry.OFFSET_GAPS.labels(self.topic, "repositioned").inc()
        # Routine after a rebalance (the new owner's fetch ran ahead of the ledger): nobody must act.
        log.info("batch would skip records; seeking to the ledger", **where, next_available=first)
        self._seek_back(st, batch, first)
        await self.control.seek(p, gap.expected)
        return False

    def _seek_back(self, st: _Partition, batch: Batch[Any], first: int) -> None:
        """Drop what was fetched from the wrong position: it comes again after the seek."""
        # The batch's own records are given back by its writer, after the attempt.
        self._empty(st)
        self._stale(len(batch), 0)
        st.cursor.sought(first)

    async def _seek_to_ledger(self, st: _Partition) -> None:
        try:
            ledger = await self.sink.positions(self.topic)
            target = next_offset(ledger.get(st.number))
            # The cursor expects what this seek brings, not an earlier seek's target: a batch that
            # committed since may have taken the ledger past it, and everything the seek delivered
            # would be stale to the old target, for ever.
            self._empty(st)
            st.cursor.sought(target)
            await self.control.seek(st.number, target)
        except Exception as exc:
            log.warning("could not seek to the ledger", topic=self.topic, partition=st.number, error=str(exc))

    # -- after a commit -------------------------------------------------------------------------

    def _committed(
        self, st: _Partition, batch: Batch[Any], result: WriteResult[Any], digests: dict[int, bytes], seconds: float
    ) -> None:
        p = batch.partition
        st.progress_at = time.monotonic()
        if result.cache_misses:
            log.warning(
                "cached keys not in the database (it went back in time): applied again; cache reloaded",
                topic=self.topic,
                partition=p,
                records=result.cache_misses,
            )
            self.cache.forget([p])
        if self.cache.enabled:
            keys = [digests[r.offset] for r in result.in_database if r.offset in digests]
            self.cache.remember(p, batch.first_offset, batch.last_offset, keys)
            self._m_keys.set(len(self.cache))
        applied, db_dups = len(result.applied), len(result.duplicates)
        self._m_applied.inc(applied)
        self._m_dup_db.inc(db_dups)
        self._m_dup_cache.inc(result.cached_duplicates)
        self._m_redelivered.inc(result.redelivered)
        self._m_batch.observe(len(batch))
        self._m_upsert.observe(seconds)
        self._m_last_commit.set_to_current_time()
        self._m_superseded.inc(result.superseded)
        telemetry.LEDGER_OFFSET.labels(self.topic, str(p)).set(result.ledger_after)
        self.applied[p] = result.ledger_after + 1
        if self.config.labelled_tenants:
            for record in result.applied:
                tenant = record.event.tenant_id
                if tenant in self.config.labelled_tenants:
                    telemetry.TENANT_ROWS.labels(self.topic, str(tenant)).inc()
        t = self.totals
        t["applied"] += applied
        t["duplicates_db"] += db_dups
        t["duplicates_cache"] += result.cached_duplicates
        t["dead_letters"] += len(result.dead_letters)
        t["redelivered"] += result.redelivered
        t["superseded"] += result.superseded
        t["lost"] += result.lost
        if result.lost:
            telemetry.RECORDS_LOST.labels(self.topic, str(p)).inc(result.lost)
        log.debug(
            "batch committed",
            topic=self.topic,
            partition=p,
            first_offset=batch.first_offset,
            last_offset=batch.last_offset,
            applied=applied,
            duplicates=db_dups + result.cached_duplicates,
            dead_letters=len(result.dead_letters),
            redelivered=result.redelivered,
            seconds=round(seconds, 4),
        )

    # -- periodic and shutdown ------------------------------------------------------------------

    def tick(self) -> None:
        """Log progress now and then (called periodically by the agent)."""
        now = time.monotonic()
        if now - self._progress_at >= self.config.progress_log_s and self.totals != self._progress_last:
            self._progress_at, self._progress_last = now, dict(self.totals)
            log.info("progress", topic=self.topic, buffered=self.buffered, **self.totals)

    async def drain(self) -> None:
        """Write everything buffered and wait for it to commit, for at most the drain timeout."""
        self._stopping = True
        self._deadline = time.monotonic() + self.config.drain_timeout_s
        tasks = [st.task for st in self._parts.values() if st.task is not None and not st.task.done()]
        for st in self._parts.values():
            st.wake.set()
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.config.drain_timeout_s + 1.0)
            for task in late:
                task.cancel()
        # Drained twice on a stop (before Faust's shutdown, then by the agent's own end): said
        # once, unless the second drain changed the totals.
        if self.totals != self._drained_totals:
            self._drained_totals = dict(self.totals)
            log.info("drained", topic=self.topic, **self.totals)
