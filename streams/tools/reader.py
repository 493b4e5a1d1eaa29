"""The one group-less Kafka reader: what tail, verify, dlq, lag, topics, the worker's gap check,
the tests and the benchmark use to look at topics.

A `Reader` wraps one aiokafka consumer that assigns partitions itself, joins no group and
commits nothing, so it never disturbs the workers; it reads `read_committed`, so records of an
aborted transaction are never counted (brokers that report aborted transactions; Tansu 0.6
does not). An admin client is opened beside it for what a consumer cannot tell: which topics
and partitions exist now, and a group's committed offsets (an offset fetch: no join, no
rebalance).
Both are started on first use and stopped when the `async with` block ends.

One operation at a time per Reader: a read and a gap check share the consumer's assignment, so
they take turns (a lock), and the assignment is paused after each, so nothing is fetched in the
background between them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from streams import logs
from streams.aiokafka_internals import instrument, unreadable

Security = Mapping[str, Any]  # aiokafka client arguments: security_protocol, ssl_context, sasl_*


@dataclass(frozen=True)
class Unreadable:
    """A record batch the Kafka client cannot read, from `offset` on (stepped over by `read`)."""

    topic: str
    partition: int
    offset: int
    detail: str


@dataclass(frozen=True)
class Start:
    """Where to begin in each partition: all of it, since a time, or the last N records."""

    from_beginning: bool = False
    since: datetime | None = None
    last: int | None = 10


FROM_BEGINNING = Start(from_beginning=True)
# How long a read waits for the next record while a partition is short of its end offset. A
# broker here (Tansu) answered a fetch after more than 2 s on a loaded machine: a reader that took
# 2 s of quiet for the end read a DLQ short, and verify called 9,676 dead letters missing.
STALL_S = 60.0
AFTER_END_POLLS = 2  # polls with records once every partition is at its end, before stopping


class ReadStalled(RuntimeError):
    """Nothing moved for `stall_s` seconds while partitions were short of their end offsets:
    `short` maps each such partition to (position, end offset), None where it is not known."""

    def __init__(self, topic: str, short: dict[int, tuple[int, int] | None], stall_s: float) -> None:
        self.topic, self.short, self.stall_s = topic, short, stall_s
        where = ", ".join(
            f"[{p}] at {at[0]} of {at[1]}" if at else f"[{p}] at an unknown position"
            for p, at in sorted(short.items())[:8]
        )
        more = f" and {len(short) - 8} more" if len(short) > 8 else ""
        super().__init__(
            f"reading {topic} stopped short of its end: nothing for {stall_s:g} s with partitions "
            f"{where}{more}; the broker is slow or unreachable, try again"
        )


log = logs.get(__name__)


class Reader:
    """`async with Reader(bootstrap, security) as reader:` then any of its methods, in turn."""

    def __init__(self, bootstrap: str | Sequence[str], security: Security | None = None) -> None:
        self.bootstrap = [bootstrap] if isinstance(bootstrap, str) else list(bootstrap)
        self.security = dict(security or {})
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._turn = asyncio.Lock()
        # Two callers asking for the consumer at once (two partitions' holes resolved together)
        # would each start one, and the first would be left open: one opens, the other waits.
        self._opening = asyncio.Lock()
        # Record batches the Kafka client could not read (a header key that is not UTF-8, a
        # corrupt batch), stepped over by `read`: what a caller reports instead of crashing.
        self.unreadable: list[Unreadable] = []

    async def __aenter__(self) -> Reader:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        consumer, admin, self._consumer, self._admin = self._consumer, self._admin, None, None
        if consumer is not None:
            try:
                await consumer.stop()
            except asyncio.CancelledError:
                # aiokafka's fetcher, closing, awaits the fetch tasks it cancelled and lets their
                # CancelledError out when one was backing off (a fetch that timed out on a busy
                # broker): `eventsink verify` failed so at its very end in a clean-clone test run.
                # A cancel of this task itself goes on.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                log.debug("the Kafka consumer stopped with a fetch still pending")
        if admin is not None:
            await admin.close()

    async def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            async with self._opening:
                if self._consumer is None:
                    await self._open_consumer()
        assert self._consumer is not None
        return self._consumer

    async def _open_consumer(self) -> None:
        if self._consumer is None:
            instrument()
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                **self.security,
            )
            try:
                await consumer.start()
            except BaseException:
                await _quietly(consumer.stop())  # a client that failed to start is still open
                raise
            await asyncio.sleep(0)  # aiokafka 0.14: stop() right after start() raises otherwise
            self._consumer = consumer

    async def admin(self) -> AIOKafkaAdminClient:
        async with self._opening:
            if self._admin is None:
                admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self.security)
                try:
                    await admin.start()
                except BaseException:
                    await _quietly(admin.close())
                    raise
                self._admin = admin
        return self._admin

    # -- metadata -------------------------------------------------------------------------

    async def partitions(self, topic: str) -> list[int]:
        """The topic's partitions, from fresh metadata (sorted).

        Raises LookupError when the topic does not exist.
        """
        known = (await self._describe()).get(topic)
        if not known:
            raise LookupError(f"topic {topic!r} does not exist")
        return known

    async def partition_counts(self, topics: Iterable[str]) -> dict[str, int]:
        """Partitions of each topic from fresh metadata: 0 for a topic that does not exist."""
        described = await self._describe()
        return {topic: len(described.get(topic, ())) for topic in topics}

    async def _describe(self) -> dict[str, list[int]]:
        """topic -> its partitions, as the broker knows them now.

        Asks the admin client for every topic's metadata, never for names: a request naming a
        missing topic would create it on brokers that create topics on demand. (The consumer's own
        metadata is no guide: once it is assigned partitions, it only follows their topics.)
        """
        described = await (await self.admin()).describe_topics()
        return {t["topic"]: sorted(p["partition"] for p in t["partitions"]) for t in described if not t["error_code"]}

    async def beginning_offsets(self, topic: str, partitions: Iterable[int] | None = None) -> dict[int, int]:
        """partition -> the first offset the broker still has."""
        tps = await self._tps(topic, partitions)
        return {tp.partition: o for tp, o in (await (await self.consumer()).beginning_offsets(tps)).items()}

    async def end_offsets(self, topic: str, partitions: Iterable[int] | None = None) -> dict[int, int]:
        """partition -> the offset after the last committed record (the last stable offset).

        Some brokers (Tansu) report the first offset of the last record batch + 1 here.
        """
        tps = await self._tps(topic, partitions)
        return {tp.partition: o for tp, o in (await (await self.consumer()).end_offsets(tps)).items()}

    async def committed(self, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int | None]:
        """partition -> the group's committed offset (the next to read), None where it has none.

        An offset fetch through the admin client: the group is neither joined nor rebalanced.
        """
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return {}
        # Partitions are always named: some brokers (Tansu) drop the connection otherwise.
        found = await (await self.admin()).list_consumer_group_offsets(group, partitions=tps)
        out: dict[int, int | None] = {}
        for tp in tps:
            meta = found.get(tp)
            out[tp.partition] = meta.offset if meta is not None and meta.offset >= 0 else None
        return out

    async def _tps(self, topic: str, partitions: Iterable[int] | None) -> list[TopicPartition]:
        chosen = await self.partitions(topic) if partitions is None else sorted(set(partitions))
        return [TopicPartition(topic, p) for p in chosen]

    # -- reading --------------------------------------------------------------------------

    async def read(
        self,
        topic: str,
        *,
        start: Start = FROM_BEGINNING,
        partitions: Iterable[int] | None = None,
        follow: bool = False,
        stall_s: float = STALL_S,
    ) -> AsyncIterator[list[ConsumerRecord]]:
        """Yield chunks of records; without `follow`, stop once caught up with the topic. With
        `follow`, yield one empty chunk when caught up, then live records as they come.

        Caught up means every partition's position reached the end offset the broker gave at the
        start, then one more poll brought nothing, or AFTER_END_POLLS polls went by (a topic
        being written has no quiet moment). The extra polls are there because some brokers
        (Tansu) report a partition's end as the first offset of its last record batch + 1: the
        rest of that batch comes after.

        A slow broker is waited for, never taken for the end: a read that stopped early would
        pass for the whole topic (verify would check less than it says, a replay would replay
        again). Raises ReadStalled when no record came for `stall_s` seconds while a partition
        is short of its end, and LookupError when the topic or the partitions asked for do not
        exist.
        """
        async with self._turn:
            consumer = await self.consumer()
            known = set(await self.partitions(topic))
            wanted = sorted(known if partitions is None else set(partitions) & known)
            if not wanted:
                raise LookupError(f"topic {topic!r} has no partition {sorted(partitions or [])}")
            tps = [TopicPartition(topic, p) for p in wanted]
            consumer.assign(tps)
            try:
                for tp, offset in (await _positions(consumer, tps, start)).items():
                    consumer.seek(tp, offset)
                ends = await consumer.end_offsets(tps)
                positions = await _now_at(consumer, topic, tps, stall_s)
                progress_at = time.monotonic()
                after_end: int | None = None  # polls since every partition reached its end
                caught_up = False
                while True:
                    try:
                        batch = await consumer.getmany(timeout_ms=1000 if caught_up else 300, max_records=5000)
                    except Exception as exc:
                        where = unreadable(exc)
                        if where is None:
                            raise
                        tp, offset = where
                        self.unreadable.append(
                            Unreadable(tp.topic, tp.partition, offset, f"{type(exc).__name__}: {exc}")
                        )
                        # aiokafka drops what the other partitions gave in the same call, their
                        # positions already past it: they read it again.
                        moved = await _now_at(consumer, topic, tps, stall_s)
                        for other, at in positions.items():
                            if other != tp and moved[other] != at:
                                consumer.seek(other, at)
                        consumer.seek(tp, offset + 1)
                        positions[tp] = offset + 1
                        progress_at = time.monotonic()
                        continue
                    records = [r for chunk in batch.values() for r in chunk]
                    if records:
                        yield records
                    now = await _now_at(consumer, topic, tps, stall_s)
                    if now != positions:  # records, or batches the client steps over (markers, aborted)
                        progress_at = time.monotonic()
                    positions = now
                    if caught_up:
                        continue
                    if after_end is None:
                        short = {tp.partition: (at, ends[tp]) for tp, at in positions.items() if at < ends[tp]}
                        if short:
                            if time.monotonic() - progress_at > stall_s:
                                raise ReadStalled(topic, short, stall_s)
                            continue
                        after_end = 0
                    if records and after_end < AFTER_END_POLLS:
                        after_end += 1
                        continue
                    if not follow:
                        return
                    caught_up = True
                    yield []  # the backlog is over; what follows is live
            finally:
                _idle(consumer)

    async def read_all(
        self, topic: str, *, on_records: Callable[[int], None] | None = None, **kwargs: Any
    ) -> list[ConsumerRecord]:
        """Every record `read` yields (without `follow`), in one list; `on_records(n)` after each
        chunk of n records (a progress display)."""
        out: list[ConsumerRecord] = []
        async for chunk in self.read(topic, **kwargs):
            out.extend(chunk)
            if on_records is not None:
                on_records(len(chunk))
        return out

    async def first_offset_from(self, topic: str, partition: int, offset: int, timeout: float = 10.0) -> int:
        """The offset of the first record at or after `offset` that the broker still has.

        Raises TimeoutError when none arrives in time. Tells a legitimate hole in a partition
        (compaction, transaction markers, retention) from records a worker is about to skip.
        """
        tp = TopicPartition(topic, partition)
        async with self._turn:
            consumer = await self.consumer()
            consumer.assign([tp])
            try:
                # End offsets are not consulted: some brokers under-report them while being written.
                begin = (await consumer.beginning_offsets([tp]))[tp]
                consumer.seek(tp, max(offset, begin))
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    records = (await consumer.getmany(tp, timeout_ms=500, max_records=1)).get(tp)
                    if records:
                        return int(records[0].offset)
                raise TimeoutError(f"no record of {topic}[{partition}] at or after {offset} within {timeout}s")
            finally:
                _idle(consumer)


async def _quietly(closing: Any) -> None:
    """Close a client whose start failed; that failure, not this one, is the one to report."""
    try:
        await closing
    except Exception as exc:
        log.debug("closing a client that failed to start failed too", error=f"{type(exc).__name__}: {exc}")


def _idle(consumer: AIOKafkaConsumer) -> None:
    """Stop fetching between operations. Paused, not unassigned: aiokafka 0.14's consumer can
    hang in stop() once a user assignment was dropped (its fetch task waits for a new one)."""
    consumer.pause(*consumer.assignment())


async def _now_at(
    consumer: AIOKafkaConsumer, topic: str, tps: list[TopicPartition], stall_s: float
) -> dict[TopicPartition, int]:
    """Each partition's position. aiokafka waits without a limit for a position it is resetting
    (after an offset out of range) to be looked up: a broker that stopped answering is a stall."""
    try:
        found = await asyncio.wait_for(asyncio.gather(*(consumer.position(tp) for tp in tps)), stall_s)
    except TimeoutError:
        raise ReadStalled(topic, dict.fromkeys((tp.partition for tp in tps), None), stall_s) from None
    return dict(zip(tps, found, strict=True))


async def _positions(consumer: AIOKafkaConsumer, tps: list[TopicPartition], start: Start) -> dict[TopicPartition, int]:
    begins = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    if start.from_beginning:
        return dict(begins)
    if start.since is not None:
        at = await consumer.offsets_for_times({tp: int(start.since.timestamp() * 1000) for tp in tps})
        return {tp: (at[tp].offset if at.get(tp) else ends[tp]) for tp in tps}
    return {tp: max(begins[tp], ends[tp] - (start.last or 0)) for tp in tps}


async def read_all(
    bootstrap: str | Sequence[str], topic: str, security: Security | None = None, **kwargs: Any
) -> list[ConsumerRecord]:
    """Every record of a topic (see `Reader.read`), through a Reader of its own."""
    async with Reader(bootstrap, security) as reader:
        return await reader.read_all(topic, **kwargs)
