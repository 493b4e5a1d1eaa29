"""Reading on through a rebalance: the partitions a worker gave up, until its new assignment.

aiokafka and Faust rebalance eagerly: at every rebalance a worker gives up all its partitions
before it joins again, and gets back the ones it keeps only once the group has formed again
(Tansu holds every join 3 s) and Faust has recovered its tables, about 4 s without a commit on
partitions that never moved. Meanwhile a `RebalanceReader` fetches those partitions outside the
group (an aiokafka consumer that assigns partitions itself, joins no group and commits nothing),
from where each pipeline's deliveries stand, into the same pipelines, whose writers go on.

Safe because the ledger, not the group, decides what is applied: every batch locks its
partition's ledger row and skips the records at or below it, so a batch written here after
another worker took the partition applies nothing twice (a worker frozen past its session
writes late the same way). The dedupe cache only saves database work and is checked against the
ledger in the batch's transaction (`streams.worker.dedupe_cache`).

What stops the reading of a partition:
- the new assignment does not have it (`release`): the pipeline forgets it, as at a revocation;
- the new assignment has it, and the ledger positions the group's consumer (`finish`): the
  consumer delivers from the ledger on, and the pipeline drops what it buffered from here;
- after `limit_s`, or at a fetch error: before the new assignment, the pipelines forget every
  partition still read here, and the assignment positions them from the ledger; after it, the
  kept partitions wait, unread, for `finish` (revoked then, the records the group's consumer
  delivers of them would be stale to their pipeline);
- shutdown: the pipelines drain what they hold.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from faust.types import TP

from streams import logs
from streams.worker.budget import Budget, record_bytes
from streams.worker.faust_internals import Fetched

if TYPE_CHECKING:
    from streams.worker.pipeline import Pipeline

log = logs.get(__name__)


class RebalanceReader:
    """Reads the partitions given up at a rebalance into their pipelines, until the new assignment.

    `pipelines`: one per source topic. `fetch_max_wait_ms`, `max_records`: as the group's
    consumer fetches. `limit_s`: the longest it reads without an assignment (seconds).
    """

    def __init__(
        self,
        bootstrap: list[str],
        security: Mapping[str, Any],
        pipelines: Mapping[str, Pipeline],
        budget: Budget,
        *,
        fetch_max_wait_ms: int,
        max_records: int,
        limit_s: float,
    ) -> None:
        self.bootstrap = bootstrap
        self.security = dict(security)
        self.pipelines = pipelines
        self.budget = budget
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.max_records = max_records
        self.limit_s = limit_s
        # Kept open between rebalances: a start-up (metadata) would delay the first fetch.
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._reading: set[TopicPartition] = set()
        self._starts: dict[TopicPartition, int] = {}  # where each is read from
        self._held: set[TopicPartition] = set()  # paused by its pipeline (its buffer is full)
        self._assigned = False  # the consumer has `_reading` as its assignment
        # The new assignment came (`release`): what is still in `_reading` is kept, and waits for
        # `finish` to be handed back, whatever stops the reading meanwhile.
        self._settled = False
        self._said = False  # "read through the rebalance" logged for this reading
        self._records = 0
        self._started_at = 0.0

    # -- what the pipelines' control asks -------------------------------------------------------
    # Before the reader's consumer has its assignment (it is opening), what is asked is kept and
    # applied once it has.

    def reading(self, topic: str, partition: int) -> bool:
        return TopicPartition(topic, partition) in self._reading

    def hold(self, topic: str, partition: int) -> None:
        ktp = TopicPartition(topic, partition)
        self._held.add(ktp)
        if self._assigned and ktp in self._reading:
            self._pause({ktp})

    def release_hold(self, topic: str, partition: int) -> None:
        ktp = TopicPartition(topic, partition)
        self._held.discard(ktp)
        if self._assigned and ktp in self._reading and self._consumer is not None and self.active:
            self._consumer.resume(ktp)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        ktp = TopicPartition(topic, partition)
        self._starts[ktp] = offset
        if self._assigned and ktp in self._reading and self._consumer is not None:
            self._consumer.seek(ktp, offset)

    def end_offset(self, topic: str, partition: int) -> int | None:
        ktp = TopicPartition(topic, partition)
        if not self._assigned or ktp not in self._reading or self._consumer is None:
            return None
        return self._consumer.highwater(ktp)

    @property
    def active(self) -> bool:
        """Whether it is reading now (a partition may be `reading` and wait for `finish`)."""
        return self._task is not None and not self._task.done()

    # -- the rebalance ----------------------------------------------------------------------------

    def start(self, revoked: Iterable[TP]) -> set[TP]:
        """Read the revoked partitions whose pipeline knows where its deliveries stand; returns
        them (the others are the caller's to revoke). Never waits: the group's join goes on."""
        starts: dict[TopicPartition, int] = {}
        held: set[TopicPartition] = set()
        for tp in revoked:
            pipeline = self.pipelines.get(tp.topic)
            offset = pipeline.next_offset(tp.partition) if pipeline is not None else None
            if pipeline is None or offset is None:
                continue
            ktp = TopicPartition(tp.topic, tp.partition)
            starts[ktp] = offset
            if pipeline.is_held(tp.partition):
                held.add(ktp)
        if self._reading:
            self._done("another rebalance")  # said (once) before it is read on, from here
        self._stop_task()  # a rebalance during a rebalance: what is read is read on, from here
        self._reading, self._starts, self._held, self._assigned = set(starts), starts, held, False
        self._settled = self._said = False
        if not starts:
            return set()
        self._records = 0
        self._started_at = time.monotonic()
        log.info(
            "reading through the rebalance",
            partitions={f"{t.topic}[{t.partition}]": o for t, o in sorted(starts.items())},
        )
        self._task = asyncio.create_task(self._read(), name="rebalance reader")
        return {TP(t.topic, t.partition) for t in starts}

    def release(self, assigned: Iterable[TP]) -> set[TP]:
        """The new assignment: stop reading what it does not have; returns those partitions
        (the caller revokes them in their pipelines)."""
        keep = {TopicPartition(tp.topic, tp.partition) for tp in assigned}
        moved = self._reading - keep
        self._settled = True
        self._unassign(moved)
        return {TP(t.topic, t.partition) for t in moved}

    def finish(self, tp: TP) -> bool:
        """The group's consumer is about to be positioned on `tp` from the ledger: stop reading
        it here. Whether it was read here (then the pipeline drops what it buffered from here)."""
        ktp = TopicPartition(tp.topic, tp.partition)
        if ktp not in self._reading:
            return False
        self._unassign({ktp})
        return True

    async def close(self) -> None:
        """At shutdown: stop reading (the pipelines drain what they hold) and close the consumer."""
        self._reading.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await asyncio.gather(consumer.stop(), return_exceptions=True)

    # -- inside -------------------------------------------------------------------------------------

    def _unassign(self, tps: set[TopicPartition]) -> None:
        if not tps:
            return
        self._reading -= tps
        if self._assigned:
            # Paused, not unassigned: a new assignment would lose the others' positions.
            self._pause(tps)
        if not self._reading:
            self._done("the new assignment")

    def _done(self, why: str) -> None:
        if not self._said:
            self._said = True
            log.info(
                "read through the rebalance",
                records=self._records,
                seconds=round(time.monotonic() - self._started_at, 3),
                until=why,
            )
        self._stop_task()

    def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _pause(self, tps: Iterable[TopicPartition]) -> None:
        if self._consumer is not None:
            assigned = self._consumer.assignment()
            self._consumer.pause(*(t for t in tps if t in assigned))

    async def _open(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",  # as the group's consumer reads
                fetch_max_wait_ms=self.fetch_max_wait_ms,
                **self.security,
            )
            try:
                await consumer.start()
            except BaseException:
                await asyncio.gather(consumer.stop(), return_exceptions=True)
                raise
            self._consumer = consumer
        return self._consumer

    async def _read(self) -> None:
        deadline = time.monotonic() + self.limit_s
        why = "its time limit"
        try:
            consumer = await self._open()
            if not self._reading:
                return  # the assignment came first
            consumer.assign(sorted(self._reading))
            for ktp in self._reading:
                consumer.seek(ktp, self._starts[ktp])
            consumer.pause(*(self._held & self._reading))
            self._assigned = True
            while self._reading and time.monotonic() < deadline:
                await self.budget.room()
                fetched = await consumer.getmany(timeout_ms=self.fetch_max_wait_ms, max_records=self.max_records)
                for ktp, records in fetched.items():
                    # Checked after the await: a partition released or finished meanwhile is
                    # delivered by its new owner, or by the group's consumer, from the ledger.
                    if not records or ktp not in self._reading:
                        continue
                    nbytes = sum(map(record_bytes, records))
                    self.budget.take(nbytes)
                    self._records += len(records)
                    self.pipelines[ktp.topic].ingest([Fetched(TP(ktp.topic, ktp.partition), records, -1, nbytes)])
        except asyncio.CancelledError:
            raise
        except KafkaError as exc:
            why = "a fetch error"
            log.warning("reading through the rebalance stopped", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            why = "an error"
            log.error("reading through the rebalance failed", exc_info=exc)
        self._pause(self._consumer.assignment() if self._consumer is not None else ())
        if self._settled:
            # The new assignment came: what is left is kept, and stays in `_reading`, unread,
            # until `finish` hands it back to the group's consumer (revoked here, the pipelines
            # would drop records of partitions the group's consumer delivers them).
            self._done(why)
            return
        # Stopped without an assignment: the pipelines forget what is left, positioned from the
        # ledger at the next assignment.
        left, self._reading, self._assigned = self._reading, set(), False
        for topic, pipeline in self.pipelines.items():
            mine = {t.partition for t in left if t.topic == topic}
            if mine:
                pipeline.on_revoked(mine)
        if left:
            self._done(why)
