"""How far a consumer group is behind, in Kafka's terms and in PostgreSQL's (the ledger).

Read without joining the group: end offsets from a group-less consumer, the group's committed
offsets through an offset fetch (no join, no rebalance), the ledger from the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from sinks.core import ledger as offsets


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    end_offset: int
    committed: int | None  # the group's committed offset in Kafka (next to read)
    applied: int  # the ledger's last applied offset + 1 (next to apply)

    @property
    def kafka_lag(self) -> int:
        return max(0, self.end_offset - (self.committed or 0))

    @property
    def ledger_lag(self) -> int:
        return max(0, self.end_offset - self.applied)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "kafka_lag": self.kafka_lag, "ledger_lag": self.ledger_lag}


async def _kafka_offsets(
    bootstrap: list[str], group: str, topics: Iterable[str], security: Mapping[str, Any]
) -> tuple[dict, dict]:
    plain = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **security)
    grouped = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, **security)
    await asyncio.gather(plain.start(), grouped.start())
    await asyncio.sleep(0)  # aiokafka 0.14: stop() right after start() raises otherwise
    try:
        tps = []
        for topic in topics:
            for p in plain.partitions_for_topic(topic) or ():
                tps.append(TopicPartition(topic, p))
        ends = await plain.end_offsets(tps) if tps else {}
        starts = await plain.beginning_offsets(tps) if tps else {}
        committed = {tp: await grouped.committed(tp) for tp in tps}
        return {tp: (starts[tp], end) for tp, end in ends.items()}, committed
    finally:
        await asyncio.gather(plain.stop(), grouped.stop())


def collect(
    bootstrap: list[str], dsn: str, group: str, topics: list[str], security: Mapping[str, Any] | None = None
) -> list[PartitionLag]:
    ends, committed = asyncio.run(_kafka_offsets(bootstrap, group, topics, security or {}))

    async def ledger() -> dict[tuple[str, int], int]:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            return {(r.topic, r.partition): r.last_offset + 1 for r in await offsets.rows(conn, group)}

    applied = asyncio.run(ledger())
    # Records the broker no longer has (retention) can be neither applied nor waited for.
    return [
        PartitionLag(
            tp.topic, tp.partition, end, committed.get(tp), max(start, applied.get((tp.topic, tp.partition), 0))
        )
        for tp, (start, end) in sorted(ends.items(), key=lambda kv: (kv[0].topic, kv[0].partition))
    ]
