"""How far a consumer group is behind, in Kafka's terms and in PostgreSQL's (the ledger).

Read without joining the group (`streams.tools.reader`): end offsets from the group-less reader,
the group's committed offsets through an offset fetch (no join, no rebalance), the ledger from
the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from sinks.core import ledger as offsets
from streams import aio
from streams.tools.reader import Reader


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
) -> dict[tuple[str, int], tuple[int, int, int | None]]:
    """(topic, partition) -> (beginning offset, end offset, the group's committed offset or None)."""
    out = {}
    async with Reader(bootstrap, security) as reader:
        for topic in topics:
            try:
                partitions = await reader.partitions(topic)
            except LookupError:
                continue
            starts = await reader.beginning_offsets(topic, partitions)
            ends = await reader.end_offsets(topic, partitions)
            committed = await reader.committed(group, topic, partitions)
            out.update({(topic, p): (starts[p], ends[p], committed[p]) for p in partitions})
    return out


def collect(
    bootstrap: list[str], dsn: str, group: str, topics: list[str], security: Mapping[str, Any] | None = None
) -> list[PartitionLag]:
    kafka = aio.run(_kafka_offsets(bootstrap, group, topics, security or {}))

    async def ledger() -> dict[tuple[str, int], int]:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            return {(r.topic, r.partition): r.last_offset + 1 for r in await offsets.rows(conn, group)}

    applied = aio.run(ledger())
    # Records the broker no longer has (retention) can be neither applied nor waited for.
    return [
        PartitionLag(topic, partition, end, committed, max(start, applied.get((topic, partition), 0)))
        for (topic, partition), (start, end, committed) in sorted(kafka.items())
    ]
