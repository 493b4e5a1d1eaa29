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
from streams.tools.identity import broker_identities, log_changed
from streams.tools.reader import Reader


@dataclass(frozen=True)
class PartitionLag:
    topic: str
    partition: int
    end_offset: int
    committed: int | None  # the group's committed offset in Kafka (next to read)
    applied: int  # the ledger's last applied offset + 1 (next to apply)
    # Why workers stop this partition until an operator acts (its log is not the one the ledger
    # counted: `eventsink ledger reset`), None while it runs. A stopped partition's whole log waits.
    stopped: str | None = None

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
    try:
        now = aio.run(broker_identities(bootstrap, security or {}, topics))
    except Exception:  # no ids: the rule falls back on offsets, as the worker's does
        now = {}

    async def ledger() -> dict[tuple[str, int], offsets.LedgerRow]:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            return {(r.topic, r.partition): r for r in await offsets.rows(conn, group)}

    rows = aio.run(ledger())
    found = []
    for (topic, partition), (start, end, committed) in sorted(kafka.items()):
        row = rows.get((topic, partition))
        # The worker's own rule (`streams.worker.positioning`): such a partition waits for a reset.
        stopped = log_changed(row.last_offset, row.topic_id, row.cluster_id, now.get(topic), end) if row else None
        # Records the broker no longer has (retention) can be neither applied nor waited for.
        applied = start if stopped else max(start, row.last_offset + 1 if row else 0)
        found.append(
            PartitionLag(topic, partition, end, committed, applied, f"log_changed: {stopped}" if stopped else None)
        )
    return found
