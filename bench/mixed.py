"""The mixed scenario's topics: metric, chat and analysis records in one load, split 70/20/10.

Chat and analysis are loaded first, sized from their generators' mean records per conversation
and per analysis, and the metric topic takes the rest, so the total is exactly `events`. The
three kinds share one set of tenants (the record key), each topic has its own DLQ and explicit
configs. What every table must end with is computed once from the topics (`streams.tools.expected`)
and checked by bench/verify_mixed.py.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

from bench.verify_mixed import MixedCheck, verify_mixed
from bench.workload import Workload, WorkloadSpec, expected_on, produce, source_specs
from streams import aio
from streams.dev.loadgen.analysis import AnalysisLoad, AnalysisReport, produce_analysis
from streams.dev.loadgen.chat import ChatLoad, ChatReport, produce_chat
from streams.publish.publisher import Publisher
from streams.tools.expected import Target
from streams.tools.topics import ensure_topics

CHAT_TURNS = (2, 8)  # turns of a conversation, uniform
# pending + 1 to 3 processing + completed or failed + deleted for 10 % (AnalysisLoad's default).
ANALYSIS_EVENTS = 1 + 2 + 1 + AnalysisLoad.deleted


@dataclass(frozen=True)
class MixedSpec:
    events: int  # records in all, the three topics together
    partitions: int  # of each topic
    tenants: int
    duplicates: float  # of each kind
    seed: int
    chat_share: float = 0.2
    analysis_share: float = 0.1
    out_of_order: float = 0.3  # analyses whose events are sent shuffled

    def conversations(self) -> int:
        per_conversation = sum(CHAT_TURNS) / 2 / (1 - self.duplicates)
        return max(1, round(self.events * self.chat_share / per_conversation))

    def analyses(self) -> int:
        per_analysis = ANALYSIS_EVENTS / (1 - self.duplicates)
        return max(1, round(self.events * self.analysis_share / per_analysis))


@dataclass(frozen=True)
class MixedWorkload:
    spec: MixedSpec
    metrics: Workload
    chat_topic: str
    chat: ChatReport
    analysis_topic: str
    analysis: AnalysisReport
    expected: dict[str, Target]  # kind name -> what the database must hold for its topic
    load_seconds: float

    @property
    def topics(self) -> dict[str, str]:
        """The topic of each event kind (EVENTSINK_KINDS)."""
        return {"metric": self.metrics.topic, "chat": self.chat_topic, "analysis": self.analysis_topic}

    @property
    def sent_per_topic(self) -> dict[str, int]:
        return {
            self.metrics.topic: self.metrics.sent,
            self.chat_topic: self.chat.sent,
            self.analysis_topic: self.analysis.sent,
        }

    @property
    def sent(self) -> int:
        return sum(self.sent_per_topic.values())

    def verify(self, dsn: str) -> MixedCheck:
        return verify_mixed(dsn, self)


async def _load(bootstrap: str, prefix: str, spec: MixedSpec) -> MixedWorkload:
    chat_topic, analysis_topic, metrics_topic = f"{prefix}.chat", f"{prefix}.analysis", f"{prefix}.metrics"
    specs = [s for t in (metrics_topic, chat_topic, analysis_topic) for s in source_specs(t, spec.partitions)]
    await ensure_topics([bootstrap], specs)
    rng = random.Random(spec.seed)
    tenants = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(spec.tenants)]
    async with Publisher([bootstrap]) as publisher:
        chat_load = ChatLoad(
            conversations=spec.conversations(),
            min_turns=CHAT_TURNS[0],
            max_turns=CHAT_TURNS[1],
            duplicates=spec.duplicates,
            seed=spec.seed,
            tenant_ids=tenants,
        )
        chat = await produce_chat(publisher, chat_topic, chat_load)
        analysis_load = AnalysisLoad(
            analyses=spec.analyses(),
            duplicates=spec.duplicates,
            out_of_order=spec.out_of_order,
            seed=spec.seed,
            tenant_ids=tenants,
        )
        analysis = await produce_analysis(publisher, analysis_topic, analysis_load)
        rest = spec.events - chat.sent - analysis.sent
        metric_spec = WorkloadSpec(rest, spec.partitions, spec.tenants, spec.duplicates, spec.seed)
        metric = await produce(publisher, metrics_topic, metric_spec, tenants)
    topics = {"metric": metrics_topic, "chat": chat_topic, "analysis": analysis_topic}
    expected = await expected_on(bootstrap, topics)
    metrics = Workload(metric_spec, metrics_topic, metric.sent, expected["metric"], metric.seconds)
    seconds = chat.seconds + analysis.seconds + metric.seconds
    return MixedWorkload(spec, metrics, chat_topic, chat, analysis_topic, analysis, expected, seconds)


def load(bootstrap: str, prefix: str, spec: MixedSpec) -> MixedWorkload:
    return aio.run(_load(bootstrap, prefix, spec))
