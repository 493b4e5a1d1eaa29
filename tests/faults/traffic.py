"""Mixed traffic for the fault suite, published while the fault happens, and its oracle."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import asdict, dataclass, field

from streams.dev.loadgen.analysis import AnalysisLoad, AnalysisReport, produce_analysis
from streams.dev.loadgen.chat import ChatLoad, ChatReport, produce_chat
from streams.dev.loadgen.metric import LoadReport, MetricLoad, produce_metrics
from streams.publish.publisher import Publisher
from streams.tools.expected import Expected
from streams.tools.verify import VerifyReport, verify
from tests.helpers import Scenario, expected, ledger_totals, wait_applied


@dataclass
class Published:
    """What the traffic published to one topic: records sent, distinct valid events and invalid
    records among them, and each partition's last offset."""

    sent: int = 0
    unique: int = 0
    invalid: int = 0
    last_offsets: dict[int, int] = field(default_factory=dict)

    def add(self, report: LoadReport | ChatReport | AnalysisReport) -> None:
        self.sent += report.sent
        self.unique += report.unique
        self.invalid += report.invalid
        for p, o in report.last_offsets.items():
            self.last_offsets[p] = max(o, self.last_offsets.get(p, -1))


@dataclass
class Traffic:
    """Metric, chat and analysis records published from a thread at a steady rate.

    One round of the given sizes by default. `until_stopped=True` publishes round after round
    (the next seeds each time) until `stop()`: a fault test then needs no guess of how long its
    faults take on a loaded machine, the traffic flows until they are over.
    """

    s: Scenario
    metrics: int = 4000
    conversations: int = 60
    analyses: int = 50
    rate: float = 400.0
    invalid: float = 0.02
    duplicates: float = 0.1
    seed: int = 0
    until_stopped: bool = False
    reports: dict[str, Published] = field(default_factory=dict)
    rounds: int = 0
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as exc:  # reported by join()
            self.error = exc

    async def _publish(self) -> None:
        s = self.s
        self.reports = {topic: Published() for topic in (s.topic, s.chat_topic, s.analysis_topic)}
        async with Publisher(s.bootstrap) as pub:
            while True:
                await self._round(pub, self.seed + 3 * self.rounds)
                self.rounds += 1
                if not self.until_stopped or self._stop.is_set():
                    return

    async def _round(self, pub: Publisher, seed: int) -> None:
        s, share = self.s, self.rate / 10
        metric, chat, analysis = await asyncio.gather(
            produce_metrics(
                pub,
                s.topic,
                MetricLoad(self.metrics, duplicates=self.duplicates, invalid=self.invalid, rate=share * 7, seed=seed),
            ),
            produce_chat(
                pub,
                s.chat_topic,
                ChatLoad(
                    self.conversations,
                    duplicates=self.duplicates,
                    invalid=self.invalid,
                    rate=share * 2,
                    seed=seed + 1,
                ),
            ),
            produce_analysis(
                pub,
                s.analysis_topic,
                AnalysisLoad(self.analyses, duplicates=self.duplicates, rate=share, seed=seed + 2),
            ),
        )
        for topic, report in ((s.topic, metric), (s.chat_topic, chat), (s.analysis_topic, analysis)):
            self.reports[topic].add(report)

    def stop(self) -> None:
        """End after the round in flight (rounds last seconds), and wait for it."""
        self._stop.set()
        self.join()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self) -> None:
        assert self._thread is not None
        self._thread.join()
        if self.error is not None:
            raise self.error

    @property
    def records(self) -> int:
        return sum(r.sent for r in self.reports.values())


def settled(
    s: Scenario, traffic: Traffic, extra: dict[str, dict[int, int]] | None = None, timeout: float = 180
) -> None:
    """Until the ledger covers everything the traffic (and any extra records) published."""
    for topic, report in traffic.reports.items():
        offsets = dict(report.last_offsets)
        for p, o in (extra or {}).get(topic, {}).items():
            offsets[p] = max(o, offsets.get(p, -1))
        wait_applied(s.dsn, s.group, topic, offsets, timeout=timeout)


def oracle(s: Scenario, traffic: Traffic | None = None) -> dict[str, VerifyReport]:
    """`eventsink verify` for the three topics: nothing missing, duplicated, wrong or pending; and
    every counter of the ledger as the topic says it must be (`streams.tools.expected`).

    Given the `traffic` that made the topics, compared with what it sent too: every valid event it
    sent is applied, none is in the DLQ (a dead letter the workers themselves call `db_rejected`
    is not the oracle's verdict: an outage error taken for the record's would pass verify), every
    invalid record is a dead letter and nothing else is. Extra records a test published beside the
    traffic must be re-sends of its records or invalid ones: they add no valid event."""
    reports = {}
    for name in ("metric", "chat", "analysis"):
        kind = s.kind(name)
        topic = expected(s, name)
        if traffic is not None:
            _as_sent(kind.topic, topic, traffic.reports[kind.topic])
        report = reports[kind.topic] = verify([s.bootstrap], s.dsn, s.group, kind)
        total = report.totals()
        assert report.ok and total.pending == 0, f"{kind.topic}: {report.as_dict()['total']} {report.problems[:5]}"
        if traffic is not None:
            sent = traffic.reports[kind.topic].unique
            assert total.applied == total.unique == sent, f"{kind.topic}: sent {sent}, {report.as_dict()['total']}"
        found, want = ledger_totals(s.dsn, s.group, kind.topic), asdict(topic.ledger())
        assert found == want, f"{kind.topic}: ledger {found}, the topic says {want}"
    return reports


def _as_sent(name: str, topic: Expected, sent: Published) -> None:
    assert len(topic.events) == sent.unique, f"{name}: {len(topic.events)} valid events, the traffic sent {sent.unique}"
    assert len(topic.invalid) >= sent.invalid, f"{name}: {len(topic.invalid)} invalid, the traffic sent {sent.invalid}"
    refused = sorted(topic.refused.items())
    assert not refused, f"{name}: {len(refused)} valid records dead-lettered, e.g. {refused[:5]}"
    invalid, dead = {(r.partition, r.offset) for r in topic.invalid}, set(topic.dead_lettered)
    assert dead == invalid, (
        f"{name}: {len(dead - invalid)} dead letters of valid records, {len(invalid - dead)} invalid records "
        "not dead-lettered"
    )
