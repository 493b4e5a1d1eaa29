"""Kafka administration the worker and the CLI need: create topics with explicit configs, count
partitions, and find the first record at or after an offset (both through `streams.tools.reader`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.tools.reader import Reader, Security


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


async def partition_counts(
    bootstrap: list[str], topics: Iterable[str], security: Security | None = None
) -> dict[str, int]:
    """Partitions of each topic, 0 for one that does not exist (see `Reader.partition_counts`)."""
    async with Reader(bootstrap, security) as reader:
        return await reader.partition_counts(topics)


async def ensure_topics(
    bootstrap: list[str], specs: Iterable[TopicSpec], created: list[str] | None = None, security: Security | None = None
) -> dict[str, int]:
    """Create the topics that are missing; return the partition count of each.

    The names of the topics it created are appended to `created`, if given.
    """
    specs = list(specs)
    names = [s.name for s in specs]
    async with Reader(bootstrap, security) as reader:
        existing = await reader.partition_counts(names)
        missing = [s for s in specs if not existing.get(s.name)]
        if not missing:
            return existing
        admin = await reader.admin()
        for spec in missing:
            try:
                await admin.create_topics(
                    [NewTopic(spec.name, spec.partitions, spec.replication, topic_configs=dict(spec.config))]
                )
                if created is not None:
                    created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
        for _ in range(50):
            existing = await reader.partition_counts(names)
            if all(existing.get(name) for name in names):
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
    """`Reader.first_offset_from` through a Reader of its own (a connection per call).

    A caller that checks often keeps one Reader open and calls its method instead.
    """
    async with Reader(bootstrap, security) as reader:
        return await reader.first_offset_from(topic, partition, offset, timeout)
