"""Everything eventsink does with faust-streaming's and mode's private API, and nothing else.

Written against faust-streaming 0.15.3 (mode-streaming 0.7, aiokafka 0.14): `check_version`
refuses any other faust-streaming at start, and `tests/unit/test_faust_internals.py` has one small
test per private name used here, so an upgrade fails a test instead of a production worker.

What is reached, and why:

- **The app's transport** (`App._new_transport`): so the app gets our consumer and conductor.
- **Positioning** (`Consumer.perform_seek`, `_committed_offset`): Faust seeks every assigned
  partition to Kafka's committed offset after each rebalance (table recovery calls it, and so
  does the fetcher when it finds the flow stopped); those offsets can run ahead of what
  PostgreSQL applied, and a seek made anywhere earlier is undone by that call. So the ledger
  is read first and its seek runs right after Faust's, inside it.
- **The drain loop** (`Consumer._drain_messages`, `_read_offset`, `diag`, `_stopped`): Faust
  hands every fetched record to the conductor through `Service.wait_first`, several tasks per
  record. The hand-over can only block when flow is suspended or a stream's queue is full; when
  neither holds, `LeanConductor.deliver_nowait` queues the record synchronously. A no-op agent
  over raw bytes went from ~7.5 k to ~14 k events/s on Tansu with this alone.
- **The conductor** (`Conductor._build_handler`, `_tp_to_callback_lock`, `App.topics._tp_index`):
  for raw-bytes channels, Faust's `Message` is queued as it is (no `Event`, no refcount: events
  are never acked, Kafka's offsets follow the ledger); flow control, the producer-buffer
  throttle and the queue-pressure callbacks are kept.
- **The channel queue** (`ChannelReader`): the agents read their channel's queue in chunks
  instead of Faust's per-event `Stream`.
- **The current event** (`faust.streams._current_event`): a table write derives its changelog
  partition from it; batches have none, so `table_partition` sets it.
- **Kafka offset commits** (`ConsumerThread.call_thread`, `_ensure_consumer`): Faust's own
  `_commit` crashes the consumer on some commit errors; the offsets committed here serve
  monitoring only, so a failure is logged and the next round tries again.
- **read_committed** (`AIOKafkaConsumerThread._create_worker_consumer`, aiokafka's
  `AIOKafkaConsumer._isolation_level`): Faust reads committed records only in its own
  exactly-once mode, which does nothing for PostgreSQL; records of aborted transactions must
  never be applied. The fetch wait (`_fetch_max_wait_ms`), which Faust fixes at 1500 ms, is
  `EVENTSINK_FETCH_MAX_WAIT_MS`.
- **Records the client cannot read** (aiokafka's `FetchResult.getall`, `check_assignment`,
  `has_more`, `_update_position`, `_partition_records.next_fetch_offset`, `consumer.pause`):
  the records before the unreadable one are delivered, and the exception names its partition
  and offset, so that partition alone is stopped, at that record.
- **Holes in the log** (`AIOKafkaConsumerThread._fetch_records`, aiokafka's
  `_subscription.subscription.assignment.state_value(tp)` and `TopicPartitionState.seek`,
  `reset_to`, `await_reset`): a hole between two records the fetcher returned without any seek
  in between is a hole in the broker's log (transaction markers, aborted or compacted records),
  so the pipeline may let a batch span it without asking the broker (`LogGaps`).
- **Holding a partition** (`ConsumerThread.call_thread`, aiokafka's `pause` / `resume`): Kafka's
  per-partition pause for a partition whose batch is slow or retried, done in the aiokafka
  consumer on Faust's consumer thread (Faust's own `pause_partitions` loses records, see `hold`).
- **The table manager's start** (`TableManager.on_start`, `_update_channels`, `recovery`):
  the same steps without Faust's fixed 1 s sleep, which delays every worker's first assignment.
- **Diagnostics** (`_active_partitions`, `_paused_partitions`, `_buffered_partitions`,
  `App.topics._topics`, `Producer._producer`): read-only, for logs and `/readyz`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableSet
from contextlib import contextmanager
from importlib import metadata
from types import SimpleNamespace
from typing import Any, cast

import faust
from aiokafka.errors import ConsumerStoppedError
from aiokafka.structs import OffsetAndMetadata
from aiokafka.structs import TopicPartition as KafkaTopicPartition
from faust.assignor import PartitionAssignor
from faust.streams import _current_event
from faust.tables.manager import TableManager
from faust.transport.conductor import Conductor
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from mode import Service

from streams import logs
from streams.aiokafka_internals import instrument
from streams.worker import telemetry
from streams.worker.backlog import balance
from streams.worker.budget import DEFAULT_BUDGET_BYTES, Budget, record_bytes

log = logs.get(__name__)

FAUST_VERSION = "0.15.3"


class UnsupportedFaust(RuntimeError):
    """The installed faust-streaming is not the one this module was written against."""


def check_version() -> None:
    """Refuse to run on a faust-streaming whose internals were not read and tested."""
    installed = metadata.version("faust-streaming")
    if installed != FAUST_VERSION:
        raise UnsupportedFaust(
            f"eventsink reaches into faust-streaming's private API as of {FAUST_VERSION}, and "
            f"faust-streaming {installed} is installed: install faust-streaming=={FAUST_VERSION}, or "
            "port streams/worker/faust_internals.py and run its tests (tests/unit/test_faust_internals.py)"
        )


# Given the consumer, the next offset to read for each assigned partition the ledger knows.
Positioner = Callable[["LedgerConsumer"], Awaitable[dict[TP, int]]]


# -- the hand-over of fetched records -------------------------------------------------------


class RawSchema(faust.Schema):
    """Key and value stay the record's bytes: no codec, no model."""

    def compile(self, app: Any, **_: Any) -> Callable[..., Awaitable[Any]]:
        event = app.conf.Event  # read once: a settings lookup per record is measurable

        async def decode(message: Message, *, propagate: bool = False) -> Any:
            return event(app, message.key, message.value, message.headers, message)

        return decode


class Fetched:
    """The records of one partition from one fetch, handed to a raw-bytes agent as one item.

    `records` are aiokafka's `ConsumerRecord`s (topic, partition, offset, timestamp, key, value,
    headers); `nbytes` is what they weigh in memory until applied (`Budget`).
    """

    __slots__ = ("generation_id", "nbytes", "records", "tp")

    def __init__(self, tp: TP, records: list[Any], generation_id: int, nbytes: int) -> None:
        self.tp = tp
        self.records = records
        self.generation_id = generation_id
        self.nbytes = nbytes

    @property
    def topic(self) -> str:
        return self.tp.topic

    @property
    def partition(self) -> int:
        return self.tp.partition


def slices(fetches: list[Fetched], size: int) -> Iterator[list[Fetched]]:
    """`fetches` cut into lists of about `size` records (the last of a fetch's records may make
    one shorter), in order; a slice's `nbytes` is 0 (the budget counts the whole fetch)."""
    part: list[Fetched] = []
    n = 0
    for item in fetches:
        records = item.records
        for start in range(0, len(records), size):
            piece = records[start : start + size] if start or len(records) > size else records
            part.append(Fetched(item.tp, piece, item.generation_id, 0))
            n += len(piece)
            if n >= size:
                yield part
                part, n = [], 0
    if part:
        yield part


class LeanConductor(Conductor):
    """Faust's conductor, handing raw-bytes partitions over by the fetch, not by the record.

    Per record, Faust's conductor runs the serializer registry even for raw bytes, reads a
    setting through its registry and loops over generic channel logic, and its consumer makes a
    `Message` and reads the partition's high water mark; eventsink's topics carry bytes that the
    pipeline decodes in bulk, so each fetch of such a partition becomes one queue item
    (`Fetched`). Every other channel (Faust's own) keeps Faust's per-record handler.
    """

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        # Per partition of a raw-bytes topic: hand a fetch over without awaiting, or say no.
        self._nowait: dict[TP, Callable[[Fetched], bool]] = {}

    def raw(self, tp: TP) -> bool:
        """Whether the partition's records go to raw-bytes agents only (handed over as `Fetched`)."""
        return tp in self._nowait

    def deliver_nowait(self, item: Fetched) -> bool:
        """Hand the fetch to its agents' queues now if nothing could make that wait.

        False when the callback map is being rebuilt (rebalance), flow is suspended, a queue is
        full, or the producer buffer is over its limit: then the caller awaits `on_message`,
        which waits as Faust's does.
        """
        if self._tp_to_callback_lock.locked():
            return False
        deliver = self._nowait.get(item.tp)
        return deliver is not None and deliver(item)

    def _build_handler(self, tp: TP, channels: MutableSet[Any]) -> Callable[[Message], Awaitable[None]]:
        if not channels or not all(isinstance(c.schema, RawSchema) for c in channels):
            self._nowait.pop(tp, None)
            return super()._build_handler(tp, channels)
        app = self.app
        consumer = app.consumer
        acquire_flow_control = app.flow_control.acquire
        producer_buffer = app.producer.buffer
        pending_produce = producer_buffer.pending.qsize
        max_pending = producer_buffer.max_messages
        on_topic_buffer_full = app.sensors.on_topic_buffer_full

        def on_pressure_high() -> None:
            on_topic_buffer_full(tp)
            consumer.on_buffer_full(tp)

        def on_pressure_drop() -> None:
            consumer.on_buffer_drop(tp)

        flow_is_active = app.flow_control.is_active
        targets = tuple(channels)

        def deliver(item: Fetched) -> bool:
            if not flow_is_active() or pending_produce() > max_pending:
                return False
            for channel in targets:
                if channel.queue.full():
                    return False
            for channel in targets:
                channel.queue.put_nowait_enhanced(
                    item, on_pressure_high=on_pressure_high, on_pressure_drop=on_pressure_drop
                )
            return True

        self._nowait[tp] = deliver

        async def on_message(message: Any) -> None:  # a Fetched
            await acquire_flow_control()
            if pending_produce() > max_pending:
                await producer_buffer.wait_until_ebb()
            for channel in channels:
                queue = channel.queue
                if queue.full():
                    on_topic_buffer_full(tp)
                    await channel.put(message)
                else:
                    queue.put_nowait_enhanced(
                        message, on_pressure_high=on_pressure_high, on_pressure_drop=on_pressure_drop
                    )

        return on_message


# -- the consumer ---------------------------------------------------------------------------


# -- the consumer thread: read_committed, and holes in the log ----------------------------------


class LogGaps:
    """Holes between consecutive records of a partition that are holes in the broker's log.

    Filled on the consumer thread as records are fetched, read by the pipeline on the event loop
    as they are delivered (dict operations are atomic). An entry `offset -> previous` says: the
    record at `offset` followed the record at `previous` in the same log read, with no seek or
    reset in between. Entries are consumed when read; a partition's entries go with it.
    """

    MAX_PER_PARTITION = 10_000

    def __init__(self) -> None:
        self._gaps: dict[TP, dict[int, int]] = {}
        # Per partition: (aiokafka state object, its jump count, last offset returned).
        self._last: dict[Any, tuple[Any, int, int]] = {}

    def observe(self, states: Mapping[Any, Any], jumps_before: Mapping[Any, int], records: Mapping[Any, Any]) -> None:
        for tp, batch in records.items():
            if not batch:
                continue
            state = states.get(tp)
            previous = self._last.get(tp)
            same_read = (
                previous is not None
                and previous[0] is state
                and previous[1] == getattr(state, "_eventsink_jumps", 0)
                and jumps_before.get(tp) == previous[1]
            )
            last = previous[2] if previous is not None else None
            first_offset, last_offset = batch[0].offset, batch[-1].offset
            if same_read and last is not None and first_offset > last + 1:
                self._note(tp, first_offset, last)
            if last_offset - first_offset + 1 != len(batch):  # holes inside this read
                for before, record in itertools.pairwise(batch):
                    if record.offset > before.offset + 1:
                        self._note(tp, record.offset, before.offset)
            last = last_offset
            self._last[tp] = (state, getattr(state, "_eventsink_jumps", 0), last)

    def _note(self, tp: Any, offset: int, previous: int) -> None:
        gaps = self._gaps.setdefault(TP(tp.topic, tp.partition), {})
        if len(gaps) >= self.MAX_PER_PARTITION:
            gaps.clear()  # unread entries of a partition nobody consumes: forget them
        gaps[offset] = previous

    def verified(self, tp: TP, previous: int, offset: int) -> bool:
        """Whether the hole between `previous` and `offset` is one in the broker's log."""
        gaps = self._gaps.get(tp)
        return gaps is not None and gaps.pop(offset, None) == previous

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._gaps.pop(tp, None)


def _states(consumer: Any) -> dict[Any, Any]:
    subscription = consumer._subscription.subscription
    assignment = subscription.assignment if subscription is not None else None
    if assignment is None:
        return {}
    return {tp: assignment.state_value(tp) for tp in assignment.tps}


class LedgerConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, reading committed records only and noting holes in the log."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Both read by AIOKafkaConsumer.start() when it builds its fetcher.
        consumer._isolation_level = "read_committed"
        consumer._fetch_max_wait_ms = cast(LedgerConsumer, self.consumer).fetch_max_wait_ms
        return consumer

    async def on_thread_stop(self) -> None:
        """aiokafka's fetcher, closing, awaits the fetch tasks it cancelled and lets their
        CancelledError out (a fetch was backing off from an unreachable broker): the thread would
        end without telling the worker it stopped, which then waits mode's 60 s shutdown timeout."""
        try:
            await super().on_thread_stop()
        except asyncio.CancelledError:
            log.info("the Kafka consumer stopped with a fetch still pending (the broker is unreachable?)")

    async def _fetch_records(
        self, consumer: Any, active_partitions: Any, timeout: float | None = None, max_records: int | None = None
    ) -> Any:
        states = _states(consumer)
        jumps = {tp: getattr(state, "_eventsink_jumps", 0) for tp, state in states.items()}
        try:
            records = await super()._fetch_records(
                consumer, active_partitions, timeout=timeout, max_records=max_records
            )
        except (asyncio.CancelledError, ConsumerStoppedError):
            raise
        except Exception as exc:
            await self._isolate_unreadable(consumer, active_partitions, exc)
            raise
        if records:
            cast(LedgerConsumer, self.consumer).log_gaps.observe(_states(consumer), jumps, records)
        return records

    async def _isolate_unreadable(self, consumer: Any, active_partitions: Any, exc: Exception) -> None:
        """A partition whose fetched records the client cannot read (a corrupt batch, a header
        key that is not UTF-8) raises for the whole fetch, every time: pause it, and tell the
        consumer which it is (the pipeline stops it, loudly)."""
        tp = getattr(exc, "_eventsink_partition", None)
        if tp is None:
            log.warning("a fetch failed and no partition is named", error=f"{type(exc).__name__}: {exc}")
            return
        position = getattr(exc, "_eventsink_offset", None)
        if position is None:
            position = consumer._subscription.subscription.assignment.state_value(tp).position
        consumer.pause(tp)
        unreadable = cast(LedgerConsumer, self.consumer).unreadable
        unreadable[TP(tp.topic, tp.partition)] = (position, f"{type(exc).__name__}: {exc}")


class LedgerConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, positioned from the offsets ledger, with a cheaper drain loop."""

    log_gaps: LogGaps
    # The aiokafka consumer's fetch wait (ms), set before Faust starts the consumer thread.
    fetch_max_wait_ms: int = 500
    # Partitions the pipeline holds (its batch is being retried, or the partition is stopped).
    held: set[TP]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        instrument()
        self.log_gaps = LogGaps()
        self.budget = Budget(DEFAULT_BUDGET_BYTES)
        self.held = set()
        # Partitions whose records the client cannot read: the offset where it stands, and why.
        self.unreadable: dict[TP, tuple[int, str]] = {}
        self._pending_actions: set[asyncio.Future[Any]] = set()
        super().__init__(*args, **kwargs)

    def _new_consumer_thread(self) -> LedgerConsumerThread:
        return LedgerConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def hold(self, tp: TP) -> None:
        """Stop fetching one partition until `release`: Kafka's pause, in the aiokafka consumer.

        Not Faust's `pause_partitions`: Faust drops the records of a partition taken out of its
        active set while they are being handed over, after aiokafka moved the partition's
        position past them, and nothing would deliver them again. aiokafka's pause discards
        what it buffered for the partition without moving its position.
        """
        self.held.add(tp)
        self._on_thread(lambda consumer: consumer.pause(KafkaTopicPartition(tp.topic, tp.partition)))

    def release(self, tp: TP) -> None:
        if tp in self.held:
            self.held.discard(tp)
            self._on_thread(lambda consumer: consumer.resume(KafkaTopicPartition(tp.topic, tp.partition)))

    def forget_held(self, tps: Iterable[TP]) -> None:
        """Partitions revoked: a new assignment starts unpaused."""
        self.held.difference_update(tps)

    def _on_thread(self, action: Callable[[Any], None]) -> None:
        """Run `action(aiokafka consumer)` on Faust's consumer thread, where that consumer lives."""
        thread = self._thread

        async def call() -> None:
            try:
                action(thread._ensure_consumer())
            except Exception as exc:  # e.g. the partition was revoked meanwhile
                log.debug("consumer thread action failed", error=f"{type(exc).__name__}: {exc}")

        task = asyncio.ensure_future(thread.call_thread(call))
        self._pending_actions.add(task)
        task.add_done_callback(self._pending_actions.discard)

    fetch_errors: int = 0  # consecutive fetches that raised

    async def _survive_fetch_error(self, exc: Exception) -> None:
        """A fetch raised (a client bug, a record the client cannot parse): the worker must not die
        of it, nor trust where it stands. aiokafka drops what other partitions had fetched in
        that call while moving their positions on, so every partition is sought to the ledger
        again. Repeated errors back off, are counted and make /healthz report the fetch failing.
        """
        self.fetch_errors += 1
        telemetry.FETCH_ERRORS.inc()
        log.error(
            "fetching records failed; seeking every partition to the ledger",
            error=f"{type(exc).__name__}: {exc}",
            consecutive=self.fetch_errors,
            exc_info=exc,
            fix="a partition whose records the client cannot read is stopped (see `partition stopped`); if this "
            "repeats for every fetch, /healthz fails and the worker should be restarted",
        )
        reported = getattr(self.app, "on_unreadable", None)
        while self.unreadable:
            tp, (offset, detail) = self.unreadable.popitem()
            self.held.add(tp)
            if reported is not None:
                reported(tp, offset, detail)
        await asyncio.sleep(min(30.0, 0.5 * 2 ** min(self.fetch_errors, 6)))
        try:
            await self.perform_seek()
        except Exception as seek_exc:
            log.warning("seeking after a fetch error failed", error=f"{type(seek_exc).__name__}: {seek_exc}")

    async def perform_seek(self) -> None:
        # The ledger is read first: records fetched from Kafka's position while the database
        # answers would otherwise reach the agents before the ledger seek lands.
        positioner: Positioner | None = getattr(self.app, "ledger_positioner", None)
        targets = await positioner(self) if positioner is not None else {}
        await super().perform_seek()
        for tp, offset in targets.items():
            await self.seek_to_ledger(tp, offset)

    async def _seek(self, partition: TP, offset: int) -> None:
        # Faust seeks from the calling thread; aiokafka's seek deletes the partition's prefetched
        # records from the fetcher, which the consumer thread may be iterating at that moment
        # (KeyError in `Fetcher.fetched_records`, seen with a 1 ms GIL switch interval during a
        # rebalance). On the consumer thread, as Faust's own seek_wait and seek_to_committed are.
        thread = self._thread
        await thread.call_thread(thread.seek, partition, offset)

    async def seek_to_ledger(self, tp: TP, offset: int) -> None:
        """Seek one partition so that `offset` is the next record delivered."""
        await self.seek(tp, offset)
        # Kafka's committed offset then follows what is really replayed (monitoring only).
        self._committed_offset[tp] = offset or None

    async def _drain_messages(self, fetcher: Service) -> None:  # pragma: no cover - hot loop
        # Faust's loop (faust.transport.consumer.Consumer._drain_messages and getmany) by the
        # fetch: records of a raw-bytes partition go to its agent as one `Fetched` item, with
        # the partition's high water mark read once; Faust's own topics keep the per-record
        # hand-over. The records wait for room in the byte budget before the next fetch.
        callback = self.callback
        conductor = cast(LeanConductor, self.app.topics)
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        read_offset = self._read_offset
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        suspended = self.suspend_flow.is_set
        track_end = self.app.monitor.track_tp_end_offset
        budget = self.budget
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                await budget.room()
                set_flag(CONSUMER_FETCHING)
                try:
                    records, active = await self._wait_next_records(1.0)
                    await self.sleep(0)
                    if not records or self.should_stop:
                        continue
                    generation = self.app.consumer_generation_id
                    for tp, fetched in records.items():
                        if not self.flow_active or self.app.consumer_generation_id != generation:
                            break
                        if active is not None and tp not in active and tp not in self._buffered_partitions:
                            continue  # what Faust's getmany does with a paused partition's records
                        r_offset = read_offset.get(tp)
                        if r_offset is not None and fetched[0].offset < r_offset:
                            fetched = [r for r in fetched if r.offset >= r_offset]
                            if not fetched:
                                continue
                        track_end(tp, self.highwater(tp))
                        if conductor.raw(tp):
                            nbytes = sum(map(record_bytes, fetched))
                            item = Fetched(tp, fetched, generation, nbytes)
                            budget.take(nbytes)
                            if suspended() or not conductor.deliver_nowait(item):
                                handing = callback(item)
                                waited = await self.wait_first(handing, self.suspend_flow.wait())
                                if handing not in waited.done:  # a rebalance: dropped, comes again
                                    budget.give(nbytes)
                        else:
                            for record in fetched:
                                message = self._to_message(tp, record)
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                        read_offset[tp] = fetched[-1].offset
                    self.fetch_errors = 0
                except self.consumer_stopped_errors:
                    raise
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    await self._survive_fetch_error(exc)
                finally:
                    unset_flag(CONSUMER_FETCHING)
                    # The fetch is the agents' now: once they have applied it (and given its bytes
                    # back), it must not stay alive here while the next fetch waits for room.
                    records = None
                    fetched = item = None  # type: ignore[assignment]
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class LeanTableManager(TableManager):
    """Faust's table manager without its fixed one-second wait at start.

    `TableManager.on_start` sleeps 1 s before it registers the tables' changelogs, for tables
    declared late; the worker declares every table before the app starts (`Runtime`), so that
    second only delays the first assignment of every worker that starts (the ledger's
    partitions wait for it too). The rest is Faust's `on_start`, step for step.
    """

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class BacklogAssignor(PartitionAssignor):
    """Faust's assignor, then partitions swapped between members by backlog (`backlog.balance`).

    `app.backlog_topics` maps each source topic to the topics assigned with it (itself and its
    dedupe changelog). Faust assigns copartitioned topics (one partition count, the same
    subscribers) together, partition N of each to one member: source topics whose partitions
    Faust gave out alike are weighed together by their backlog and balanced as one, their
    partitions swapped with all their topics. Only the leader assigns; the weights are its own
    measurement (`app.backlog`), None to keep Faust's.
    """

    def assign(self, cluster: Any, member_metadata: Mapping[str, Any]) -> Any:
        """Faust's `assign`, run by the group's leader alone; logged, so that an operator (and a
        test, which must not stop the leader while the group re-forms on Tansu 0.6.0, see
        tests/faults/test_faults.py) can tell which worker leads and since which generation."""
        assignment = super().assign(cluster, member_metadata)
        coordinator = _coordinator(self.app)
        log.info(
            "group assigned as its leader",
            generation=group_generation(self.app),
            member=getattr(coordinator, "member_id", None),
            members=len(member_metadata),
        )
        return assignment

    def _protocol_assignments(
        self, assignments: Any, cl_distribution: Any, tp_distribution: Any, topic_groups: Any
    ) -> Any:
        backlog = getattr(self.app, "backlog", None)
        together: Mapping[str, Iterable[str]] = getattr(self.app, "backlog_topics", {})
        moved = False
        for sources in assigned_alike(assignments, together):
            weights = backlog.weights(sources) if backlog is not None else None
            if weights:
                topics = [t for source in sources for t in together[source]]
                moved = _swap_by_backlog(assignments, topics, weights) or moved
        if moved:
            # What Faust tells every member of where each table's partitions are.
            cl_distribution = self._get_changelog_distribution(assignments)
            tp_distribution = self._get_external_topic_distribution(assignments)
        return super()._protocol_assignments(assignments, cl_distribution, tp_distribution, topic_groups)


def assigned_alike(assignments: Mapping[str, Any], sources: Iterable[str]) -> list[list[str]]:
    """The source topics in sets whose partitions Faust gave out alike (each member the same
    partition numbers of each): those it assigned together. Topics nobody was given are left out."""
    alike: dict[tuple[Any, ...], list[str]] = {}
    for source in sources:
        held = tuple(sorted((m, tuple(sorted(a.actives.get(source, ())))) for m, a in assignments.items()))
        if any(ps for _, ps in held):
            alike.setdefault(held, []).append(source)
    return list(alike.values())


def _swap_by_backlog(assignments: Mapping[str, Any], topics: Iterable[str], weights: Mapping[int, int]) -> bool:
    """Apply `balance` to Faust's ClientAssignments (member -> actives {topic: [partitions]}) for
    `topics`, which must be assigned alike (partition N of each to the same member); otherwise,
    or with standbys among them, they are left as Faust made them (and the log says why). True if
    anything moved."""
    topics = [t for t in topics if any(t in a.actives for a in assignments.values())]
    if not topics:
        return False
    held: dict[str, set[int]] = {}
    for member, a in assignments.items():
        sets = [set(a.actives.get(t, ())) for t in topics]
        why = (
            "standby replicas among them"
            if any(a.standbys.get(t) for t in topics)
            else "a member holds different partitions of them"
            if any(x != sets[0] for x in sets)
            else None
        )
        if why is not None:
            log.info("partitions not assigned by backlog", topics=topics, member=member, reason=why)
            return False
        held[member] = sets[0]
    swaps = balance(held, weights)
    if not swaps:
        return False
    for member, a in assignments.items():
        for t in topics:
            a.actives[t] = sorted(held[member])
    log.info(
        "partitions assigned by backlog",
        topics=topics,
        swaps=[{"from": m, "partition": p, "to": o, "for": q} for m, p, o, q in swaps],
        backlog={m: sum(weights.get(p, 0) for p in ps) for m, ps in held.items()},
    )
    return True


class LedgerTransport(faust_aiokafka.Transport):
    Consumer = LedgerConsumer
    Conductor = LeanConductor


class EventsinkApp(faust.App):
    """A Faust app whose consumer resumes from the PostgreSQL offsets ledger."""

    ledger_positioner: Positioner | None = None
    # Told (partition, offset, why) when the client cannot read a partition's records there.
    on_unreadable: Callable[[TP, int, str], None] | None = None

    def _new_transport(self) -> LedgerTransport:
        return LedgerTransport(self.conf.broker_consumer, self)


async def commit_offsets(app: faust.App, offsets: Mapping[TP, int]) -> bool:
    """Commit Kafka offsets for the group (monitoring only); False when the broker refused.

    Through the aiokafka consumer on Faust's consumer thread, not Faust's `_commit`, which
    crashes the consumer on some commit errors (a rebalance in progress, an unknown member).
    """
    thread = app.consumer._thread  # type: ignore[attr-defined]

    async def commit() -> None:
        consumer = thread._ensure_consumer()
        assigned = consumer.assignment()
        todo = {
            KafkaTopicPartition(tp.topic, tp.partition): OffsetAndMetadata(offset, "")
            for tp, offset in offsets.items()
            if KafkaTopicPartition(tp.topic, tp.partition) in assigned
        }
        if todo:
            await consumer.commit(todo)

    try:
        await thread.call_thread(commit)
    except Exception as exc:
        log.debug("kafka offset commit failed", error=f"{type(exc).__name__}: {exc}")
        return False
    return True


# -- the agents' side -----------------------------------------------------------------------


class ChannelReader:
    """Takes fetched records from an agent's channel queue in chunks, skipping Faust's Stream.

    Faust's Stream iteration (sensors, processors, task-local current event, take buffer) costs
    more per event than decoding and writing it; reading the queue the conductor fills keeps what
    matters of it: fetches of an earlier rebalance generation or of a suspended flow are skipped
    (and their bytes given back to the budget), and a stop thrown into the channel ends the
    agent. Records are not acked: Kafka's offsets are committed from the ledger instead.
    """

    def __init__(self, app: faust.App, stream: Any, max_chunk: int) -> None:
        self.app = app
        self.queue = stream.channel.queue
        self.max_chunk = max_chunk
        self.budget: Budget = app.consumer.budget  # type: ignore[attr-defined]

    async def next_chunk(self) -> list[Fetched]:
        """The next fetches (at least one; about `max_chunk` records at most, whole fetches)."""
        queue = self.queue
        while True:
            chunk: list[Fetched] = [await queue.get()]
            size = len(chunk[0].records)
            get = queue.get_nowait
            try:
                while size < self.max_chunk:
                    item = get()
                    chunk.append(item)
                    size += len(item.records)
            except asyncio.QueueEmpty:
                pass
            app = self.app
            generation = app.consumer_generation_id
            fresh = []
            for item in chunk:
                if item.generation_id == generation and app.flow_control.is_active():
                    fresh.append(item)
                else:
                    self.budget.give(item.nbytes)
            if fresh:
                # What Faust's Stream would record: its livelock check reads it.
                inbound = app.monitor.stream_inbound_time
                now = time.monotonic()
                for item in fresh:
                    inbound[item.tp] = now
                return fresh


class _PartitionEvent:
    """Stands in for the event Faust's Table reads the changelog partition from."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = SimpleNamespace(topic=topic, partition=partition)


@contextmanager
def table_partition(topic: str, partition: int) -> Iterator[None]:
    """Let table writes outside per-event iteration land in `partition`'s changelog partition.

    Faust derives a table key's partition from the task-local current event
    (`Table.partition_for_key`), which batch processing does not have.
    """
    event = _PartitionEvent(topic, partition)
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


# -- diagnostics ----------------------------------------------------------------------------


def _coordinator(app: faust.App) -> Any:
    """aiokafka's group coordinator of the worker's Kafka consumer; None before it started."""
    consumer = getattr(app.consumer, "_thread", None) and app.consumer._thread._consumer  # type: ignore[attr-defined]
    return consumer._coordinator if consumer is not None else None


def group_generation(app: faust.App) -> int:
    """The consumer group generation the worker's Kafka consumer is in now (-1 before it joined):
    it changes with every rebalance, before any member of the new generation gets a record."""
    coordinator = _coordinator(app)
    return int(coordinator.generation) if coordinator is not None else -1


def consumer_state(app: faust.App) -> dict[str, Any]:
    """What Faust's consumer fetches and why not (for debugging stalls)."""
    consumer = app.consumer

    def names(tps: Any) -> list[str]:
        return sorted(f"{tp.topic}[{tp.partition}]" for tp in (tps or ()))

    return {
        "flow_active": consumer.flow_active,
        "flow_control_active": app.flow_control.is_active(),
        "rebalancing": app.rebalancing,
        "assigned": len(consumer.assignment()),
        "active": names(consumer._active_partitions),  # type: ignore[attr-defined]
        "paused": names(consumer._paused_partitions),  # type: ignore[attr-defined]
        "buffered": names(consumer._buffered_partitions),  # type: ignore[attr-defined]
        "queues": {ch.get_topic_name(): ch.queue.qsize() for ch in app.topics._topics if hasattr(ch, "queue")},  # type: ignore[attr-defined]
    }


async def broker_metadata(app: faust.App) -> None:
    """Ask the broker for its metadata through the app's producer connection (readiness)."""
    client = app.producer._producer.client  # type: ignore[attr-defined]
    await client.fetch_all_metadata()
