"""Reading a topic without a consumer group: what tail, verify and the DLQ tools share.

The consumer assigns partitions itself, joins nothing and commits nothing, so it never
disturbs the workers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


@dataclass(frozen=True)
class Start:
    """Where to begin in each partition: all of it, since a time, or the last N records."""

    from_beginning: bool = False
    since: datetime | None = None
    last: int | None = 10


async def _positions(consumer: AIOKafkaConsumer, tps: list[TopicPartition], start: Start) -> dict[TopicPartition, int]:
    begins = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    if start.from_beginning:
        return dict(begins)
    if start.since is not None:
        at = await consumer.offsets_for_times({tp: int(start.since.timestamp() * 1000) for tp in tps})
        return {tp: (at[tp].offset if at.get(tp) else ends[tp]) for tp in tps}
    return {tp: max(begins[tp], ends[tp] - (start.last or 0)) for tp in tps}


async def read(
    bootstrap: list[str],
    topic: str,
    *,
    start: Start = Start(from_beginning=True),
    partitions: Iterable[int] | None = None,
    follow: bool = False,
    idle_s: float = 2.0,
    security: Mapping[str, Any] | None = None,
) -> AsyncIterator[list[Any]]:
    """Yield chunks of records; without `follow`, stop once caught up with the topic. With
    `follow`, yield one empty chunk when caught up, then live records as they come.

    Caught up means past the end offsets seen at the start and one more poll brought nothing:
    some brokers (Tansu) report a partition's end as the first offset of its last record batch,
    so end offsets alone would stop early.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest", **(security or {})
    )
    await consumer.start()
    await asyncio.sleep(0)  # aiokafka 0.14: stop() right after start() raises otherwise
    try:
        known = consumer.partitions_for_topic(topic)
        if not known:
            raise LookupError(f"topic {topic!r} does not exist")
        wanted = sorted(known if partitions is None else set(partitions) & known)
        if not wanted:
            raise LookupError(f"topic {topic!r} has no partition {sorted(partitions or [])}")
        tps = [TopicPartition(topic, p) for p in wanted]
        consumer.assign(tps)
        for tp, offset in (await _positions(consumer, tps, start)).items():
            consumer.seek(tp, offset)
        ends = await consumer.end_offsets(tps)
        quiet_since = time.monotonic()
        caught_up = False
        while True:
            batch = await consumer.getmany(timeout_ms=1000 if caught_up else 300, max_records=5000)
            records = [r for chunk in batch.values() for r in chunk]
            if records:
                quiet_since = time.monotonic()
                yield records
                continue
            if caught_up:
                continue
            if all([await consumer.position(tp) >= ends[tp] for tp in tps]) or time.monotonic() - quiet_since > idle_s:
                if not follow:
                    return
                caught_up = True
                yield []  # the backlog is over; what follows is live
    finally:
        await consumer.stop()


async def read_all(bootstrap: list[str], topic: str, **kwargs: Any) -> list[Any]:
    return [record async for chunk in read(bootstrap, topic, **kwargs) for record in chunk]
