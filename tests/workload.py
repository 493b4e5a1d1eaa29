"""Publishing test workloads and keeping the exact account of what was sent."""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field

import orjson
import psycopg
from aiokafka import AIOKafkaProducer

from streams.dev.loadgen.analysis import AnalysisLoad, AnalysisReport, produce_analysis
from streams.dev.loadgen.chat import ChatLoad, ChatReport, produce_chat
from streams.dev.loadgen.metric import LoadReport, MetricLoad, produce_metrics
from streams.publish.publisher import Publisher
from streams.tools.topics import SOURCE_CONFIG, TopicSpec, ensure_topics
from tests.helpers import Scenario, count_by_tenant, expected, ledger_totals


@dataclass
class Sent:
    """Everything published to a scenario's topic so far."""

    tenants: list[str] = field(default_factory=lambda: [str(uuid.uuid4()) for _ in range(3)])
    unique_per_tenant: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    duplicates: int = 0
    invalid: int = 0
    last_offsets: dict[int, int] = field(default_factory=dict)

    @property
    def unique(self) -> int:
        return sum(self.unique_per_tenant.values())

    def add(self, report: LoadReport) -> None:
        self.unique_per_tenant.update(report.unique_per_tenant)
        self.sent += report.sent
        self.duplicates += report.duplicates
        self.invalid += report.invalid
        for p, o in report.last_offsets.items():
            self.last_offsets[p] = max(o, self.last_offsets.get(p, -1))


def create_topics(s: Scenario, partitions: int = 4) -> None:
    specs = [
        TopicSpec(s.topic, partitions, config=SOURCE_CONFIG),
        TopicSpec(s.dlq_topic, partitions, config=SOURCE_CONFIG),
    ]
    asyncio.run(ensure_topics([s.bootstrap], specs))


def publish(
    s: Scenario,
    sent: Sent,
    count: int,
    duplicates: float = 0.1,
    invalid: float = 0.0,
    rate: float | None = None,
    seed: int | None = None,
) -> LoadReport:
    async def go() -> LoadReport:
        async with Publisher(s.bootstrap) as pub:
            load = MetricLoad(
                count=count, duplicates=duplicates, invalid=invalid, rate=rate, seed=seed, tenant_ids=sent.tenants
            )
            return await produce_metrics(pub, s.topic, load)

    report = asyncio.run(go())
    sent.add(report)
    return report


class Feeder:
    """Metric records published from a thread, `chunk` at a time at `rate`/s, until `stop()`:
    the stream is still flowing whatever a test waits for meanwhile."""

    def __init__(self, s: Scenario, sent: Sent, chunk: int = 500, rate: float = 500, seed: int = 0, **load) -> None:
        self.s, self.sent, self.chunk, self.rate, self.seed, self.load = s, sent, chunk, rate, seed, load
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for round_ in itertools.count():
                publish(self.s, self.sent, self.chunk, rate=self.rate, seed=self.seed + round_, **self.load)
                if self._stop.is_set():
                    return
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """End after the chunk in flight, and wait for it."""
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise self.error


def send_raw(
    s: Scenario,
    sent: Sent,
    records: list[tuple[bytes | None, bytes]],
    partition: int | None = None,
    unique: dict[str, int] | None = None,
    topic: str | None = None,
    one_by_one: bool = False,
) -> list[tuple[int, int]]:
    """Send exact records (to `topic`, the metrics topic by default, optionally one partition);
    return their (partition, offset).

    `one_by_one` sends each record in a batch of its own: Tansu reports a partition's end offset
    as its last batch's first offset + 1, so only then are end offsets exact.
    """

    async def go() -> list[tuple[int, int]]:
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, enable_idempotence=False)
        await producer.start()
        try:
            if one_by_one:
                sent_md = [
                    await producer.send_and_wait(topic or s.topic, value=v, key=k, partition=partition)
                    for k, v in records
                ]
            else:
                futures = [
                    await producer.send(topic or s.topic, value=v, key=k, partition=partition) for k, v in records
                ]
                sent_md = await asyncio.gather(*futures)
            return [(md.partition, md.offset) for md in sent_md]
        finally:
            await producer.stop()

    placed = asyncio.run(go())
    sent.sent += len(records)
    sent.unique_per_tenant.update(unique or {})
    for p, o in placed:
        sent.last_offsets[p] = max(o, sent.last_offsets.get(p, -1))
    return placed


def metric_json(
    tenant: str, dedupe_id: str, value: float = 1.0, occurred_at: str = "2024-05-01T12:00:00.000001Z"
) -> bytes:
    return orjson.dumps(
        {
            "tenant_id": tenant,
            "dedupe_id": dedupe_id,
            "name": "cpu",
            "value": value,
            "occurred_at": occurred_at,
            "tags": {"host": "h"},
        }
    )


def publish_chat(s: Scenario, load: ChatLoad) -> ChatReport:
    async def go() -> ChatReport:
        async with Publisher(s.bootstrap) as pub:
            return await produce_chat(pub, s.chat_topic, load)

    return asyncio.run(go())


def publish_analysis(s: Scenario, load: AnalysisLoad) -> AnalysisReport:
    async def go() -> AnalysisReport:
        async with Publisher(s.bootstrap) as pub:
            return await produce_analysis(pub, s.analysis_topic, load)

    return asyncio.run(go())


@dataclass
class Everything:
    """Metric, chat and analysis traffic published for one scenario."""

    metrics: Sent
    chat: ChatReport
    analysis: AnalysisReport


def apply_all_kinds(
    s: Scenario, duplicates: float, seed: int, metrics: int = 1500, out_of_order: float = 0.3
) -> Everything:
    """Publish all three kinds (with duplicates and invalid records), run a worker until every
    record is applied, stop it."""
    from tests.helpers import WorkerProcess, wait_applied

    sent = Sent()
    create_topics(s)
    publish(s, sent, metrics, duplicates=duplicates, invalid=0.03, seed=seed)
    chat = publish_chat(
        s, ChatLoad(conversations=40, duplicates=duplicates, invalid=0.05, seed=seed + 1, tenant_ids=sent.tenants)
    )
    found = publish_analysis(
        s,
        AnalysisLoad(
            analyses=40, duplicates=duplicates, out_of_order=out_of_order, seed=seed + 2, tenant_ids=sent.tenants
        ),
    )
    w = WorkerProcess(s.env(), s.data_dir / "all-kinds.log").start()
    try:
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
        wait_applied(s.dsn, s.group, s.chat_topic, chat.last_offsets)
        wait_applied(s.dsn, s.group, s.analysis_topic, found.last_offsets)
    finally:
        assert w.stop() == 0
    return Everything(sent, chat, found)


def assert_exactly_once(s: Scenario, sent: Sent) -> None:
    """The database holds what the topic says it must (the oracle), and the topic holds what the
    test sent (its own tally): every row once, every counter of the ledger exact."""
    want = expected(s, "metric")
    assert (want.records, len(want.invalid), want.rows_per_tenant()) == (
        sent.sent,
        sent.invalid,
        sent.unique_per_tenant,
    )
    assert count_by_tenant(s.dsn, sent.tenants) == want.rows_per_tenant()
    with psycopg.connect(s.dsn) as conn:
        dupes = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM eventsink.metrics_raw WHERE tenant_id = ANY(%s::uuid[]) "
            "GROUP BY tenant_id, dedupe_id HAVING count(*) > 1) d",
            (sent.tenants,),
        ).fetchone()
    assert dupes == (0,)
    assert ledger_totals(s.dsn, s.group, s.topic) == asdict(want.ledger())
