"""The metric scenario's topic, which every contender reads: created with explicit configs, loaded once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bench.verify import Check, verify_metrics
from streams.dev.loadgen.metric import MetricLoad, produce_metrics
from streams.publish.publisher import Publisher
from streams.tools.topics import DLQ_CONFIG, SOURCE_CONFIG, TopicSpec, ensure_topics


@dataclass(frozen=True)
class WorkloadSpec:
    events: int
    partitions: int
    tenants: int
    duplicates: float
    seed: int


@dataclass(frozen=True)
class Workload:
    spec: WorkloadSpec
    topic: str
    sent: int
    unique: int
    duplicates: int
    unique_per_tenant: dict[str, int]
    load_seconds: float

    @property
    def topics(self) -> dict[str, str]:
        """The topic of each event kind (EVENTSINK_KINDS): metric only."""
        return {"metric": self.topic}

    @property
    def sent_per_topic(self) -> dict[str, int]:
        return {self.topic: self.sent}

    def verify(self, dsn: str) -> Check:
        return verify_metrics(dsn, self.unique_per_tenant)


def source_specs(topic: str, partitions: int) -> list[TopicSpec]:
    return [
        TopicSpec(topic, partitions, 1, SOURCE_CONFIG),
        TopicSpec(f"{topic}.dlq", partitions, 1, DLQ_CONFIG),
    ]


async def produce(
    publisher: Publisher, topic: str, spec: WorkloadSpec, tenant_ids: list[str] | None = None
) -> Workload:
    """Send the spec's metric records to an existing topic; `tenant_ids` else `spec.tenants` drawn."""
    load = MetricLoad(
        count=spec.events, tenants=spec.tenants, duplicates=spec.duplicates, seed=spec.seed, tenant_ids=tenant_ids
    )
    report = await produce_metrics(publisher, topic, load)
    return Workload(
        spec=spec,
        topic=topic,
        sent=report.sent,
        unique=report.unique,
        duplicates=report.duplicates,
        unique_per_tenant=dict(report.unique_per_tenant),
        load_seconds=report.seconds,
    )


async def _load(bootstrap: str, topic: str, spec: WorkloadSpec) -> Workload:
    await ensure_topics([bootstrap], source_specs(topic, spec.partitions))
    async with Publisher([bootstrap]) as publisher:
        return await produce(publisher, topic, spec)


def load(bootstrap: str, topic: str, spec: WorkloadSpec) -> Workload:
    return asyncio.run(_load(bootstrap, topic, spec))
