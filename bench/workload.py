"""The metric scenario's topic, which every contender reads: created with explicit configs, loaded
once, and what every contender's database must then hold, computed once from the topic."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from bench.verify import Check, verify_metrics
from streams import aio
from streams.dev.loadgen.metric import LoadReport, MetricLoad, produce_metrics
from streams.kinds import all_kinds
from streams.publish.publisher import Publisher
from streams.settings import load as load_settings
from streams.tools.expected import Target, read_expected
from streams.tools.reader import Reader
from streams.tools.topics import DLQ_CONFIG, SOURCE_CONFIG, TopicSpec, ensure_topics


@dataclass(frozen=True)
class WorkloadSpec:
    events: int
    partitions: int
    tenants: int
    duplicates: float
    seed: int


class OneMetricTopic:
    """What the harness reads of a workload on one metric topic (`topic`, with `sent` records)."""

    topic: str
    sent: int

    @property
    def topics(self) -> dict[str, str]:
        """The topic of each event kind (EVENTSINK_KINDS): metric only."""
        return {"metric": self.topic}

    @property
    def sent_per_topic(self) -> dict[str, int]:
        return {self.topic: self.sent}


@dataclass(frozen=True)
class Workload(OneMetricTopic):
    spec: WorkloadSpec
    topic: str
    sent: int
    expected: Target  # what the database must hold, from the topic (streams.tools.expected)
    load_seconds: float

    @property
    def unique(self) -> int:
        return self.expected.ledger.rows_applied

    @property
    def duplicates(self) -> int:
        return self.expected.ledger.duplicates

    @property
    def unique_per_tenant(self) -> dict[str, int]:
        return self.expected.rows_per_tenant

    def verify(self, dsn: str) -> Check:
        return verify_metrics(dsn, self.unique_per_tenant)


def source_specs(topic: str, partitions: int) -> list[TopicSpec]:
    return [
        TopicSpec(topic, partitions, 1, SOURCE_CONFIG),
        TopicSpec(f"{topic}.dlq", partitions, 1, DLQ_CONFIG),
    ]


async def produce(
    publisher: Publisher, topic: str, spec: WorkloadSpec, tenant_ids: list[str] | None = None
) -> LoadReport:
    """Send the spec's metric records to an existing topic; `tenant_ids` else `spec.tenants` drawn."""
    load = MetricLoad(
        count=spec.events, tenants=spec.tenants, duplicates=spec.duplicates, seed=spec.seed, tenant_ids=tenant_ids
    )
    return await produce_metrics(publisher, topic, load)


async def expected_on(bootstrap: str, topics: Mapping[str, str]) -> dict[str, Target]:
    """kind name -> what the database must hold for that kind's `topics[kind]` (DLQ `<topic>.dlq`).

    One topic at a time, keeping only the compact target: the decoded records are let go.
    """
    kinds = {k.name: k for k in all_kinds(load_settings())}
    out = {}
    async with Reader(bootstrap) as reader:
        for name, topic in topics.items():
            kind = replace(kinds[name], topic=topic, dlq_topic=f"{topic}.dlq")
            out[name] = (await read_expected(reader, kind)).target()
    return out


async def _load(bootstrap: str, topic: str, spec: WorkloadSpec) -> Workload:
    await ensure_topics([bootstrap], source_specs(topic, spec.partitions))
    async with Publisher([bootstrap]) as publisher:
        report = await produce(publisher, topic, spec)
    expected = await expected_on(bootstrap, {"metric": topic})
    return Workload(spec, topic, report.sent, expected["metric"], report.seconds)


def load(bootstrap: str, topic: str, spec: WorkloadSpec) -> Workload:
    return aio.run(_load(bootstrap, topic, spec))
