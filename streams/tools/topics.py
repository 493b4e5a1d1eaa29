"""Kafka administration the worker and the CLI need: create topics, count partitions, and look
at a partition without joining any consumer group."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int = 1
    config: Mapping[str, str] = field(default_factory=dict)


# Configs are always explicit: some brokers (Tansu) only report configs that were set.
SOURCE_CONFIG = {"cleanup.policy": "delete", "retention.ms": str(7 * 24 * 3600 * 1000)}
DLQ_CONFIG = {"cleanup.policy": "delete", "retention.ms": str(30 * 24 * 3600 * 1000)}
# Faust table changelogs: compacted, so that expired dedupe entries (tombstones) go away.
CHANGELOG_CONFIG = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}


Security = Mapping[str, Any]  # aiokafka client arguments: security_protocol, ssl_context, sasl_*


async def partition_counts(
    bootstrap: list[str], topics: Iterable[str], security: Security | None = None
) -> dict[str, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **(security or {}))
    await consumer.start()
    # aiokafka 0.14 raises CancelledError from stop() if its background task never ran.
    await asyncio.sleep(0)
    try:
        counts = {}
        for topic in topics:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic)
            counts[topic] = len(parts) if parts else 0
        return counts
    finally:
        await consumer.stop()


async def ensure_topics(
    bootstrap: list[str], specs: Iterable[TopicSpec], created: list[str] | None = None, security: Security | None = None
) -> dict[str, int]:
    """Create the topics that are missing; return the partition count of each.

    The names of the topics it created are appended to `created`, if given.
    """
    specs = list(specs)
    existing = await partition_counts(bootstrap, [s.name for s in specs], security)
    missing = [s for s in specs if not existing.get(s.name)]
    if missing:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(security or {}))
        await admin.start()
        try:
            for spec in missing:
                try:
                    await admin.create_topics(
                        [NewTopic(spec.name, spec.partitions, spec.replication, topic_configs=dict(spec.config))]
                    )
                    if created is not None:
                        created.append(spec.name)
                except TopicAlreadyExistsError:
                    pass
        finally:
            await admin.close()
        for _ in range(50):
            existing = await partition_counts(bootstrap, [s.name for s in specs], security)
            if all(existing.get(s.name) for s in specs):
                break
            await asyncio.sleep(0.1)
    return existing


async def first_offset_from(
    bootstrap: list[str],
    topic: str,
    partition: int,
    offset: int,
    timeout: float = 10.0,
    security: Security | None = None,
) -> int:
    """The offset of the first record at or after `offset` that the broker still has.

    Raises TimeoutError when none arrives in time. Used to tell a legitimate hole in a partition (compaction,
    transaction markers, retention) from records a worker is about to skip.
    """
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        **(security or {}),
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        # End offsets are not consulted: some brokers under-report them while being written.
        start = (await consumer.beginning_offsets([tp]))[tp]
        consumer.seek(tp, max(offset, start))
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=1)
            records = batch.get(tp)
            if records:
                return records[0].offset
        raise TimeoutError(f"no record of {topic}[{partition}] at or after {offset} within {timeout}s")
    finally:
        await consumer.stop()
