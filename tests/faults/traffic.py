"""Mixed traffic for the fault suite, published while the fault happens, and its oracle."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import traceback
from collections.abc import Sequence
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
    _live: tuple[LoadReport, ChatReport, AnalysisReport] = field(
        default_factory=lambda: (LoadReport(), ChatReport(), AnalysisReport())
    )
    error: BaseException | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _publisher: Publisher | None = None

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
        self._loop = asyncio.get_running_loop()
        self.reports = {topic: Published() for topic in (s.topic, s.chat_topic, s.analysis_topic)}
        async with Publisher(s.bootstrap) as pub:
            self._publisher = pub
            while True:
                await self._round(pub, self.seed + 3 * self.rounds)
                self.rounds += 1
                if not self.until_stopped or self._stop.is_set():
                    return

    async def _round(self, pub: Publisher, seed: int) -> None:
        s, share = self.s, self.rate / 10
        self._live = (LoadReport(), ChatReport(), AnalysisReport())
        metric, chat, analysis = await asyncio.gather(
            produce_metrics(
                pub,
                s.topic,
                MetricLoad(self.metrics, duplicates=self.duplicates, invalid=self.invalid, rate=share * 7, seed=seed),
                report=self._live[0],
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
                report=self._live[1],
            ),
            produce_analysis(
                pub,
                s.analysis_topic,
                AnalysisLoad(self.analyses, duplicates=self.duplicates, rate=share, seed=seed + 2),
                report=self._live[2],
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

    def sending(self) -> tuple[int, int, int]:
        """Records sent so far in the round in flight (metric, chat, analysis): for diagnostics."""
        metric, chat, analysis = self._live
        return metric.sent, chat.sent, analysis.sent

    def where(self) -> str:
        """Where the traffic thread is now, and each of its tasks down its awaits: for a test
        that finds it stuck (read from another thread without the loop's consent: a diagnostic,
        never raising, not a value)."""
        try:
            return self._where()
        except Exception as exc:
            return f"unreadable: {exc!r}"

    def _where(self) -> str:
        if self._thread is None or self._thread.ident is None:
            return "not started"
        frame = sys._current_frames().get(self._thread.ident)
        lines = ["thread: " + " <- ".join(_frames(traceback.extract_stack(frame)[-6:][::-1])) if frame else "ended"]
        if self.error is not None:
            lines.append(f"it raised {self.error!r}")
        for _ in range(3):  # the set may change while read
            try:
                tasks = list(asyncio.all_tasks(self._loop)) if self._loop else []
                break
            except RuntimeError:
                tasks = []
        for task in tasks:
            lines.append(f"task {task.get_name()}: " + " -> ".join(_awaits(task.get_coro())))
        if self._publisher is not None:
            lines.append(_producer_state(self._publisher))
        return "; ".join(lines)

    @property
    def records(self) -> int:
        return sum(r.sent for r in self.reports.values())


def _producer_state(pub: Publisher) -> str:
    """aiokafka's sender: the nodes it awaits a response from, and the batches it sent that no
    response has settled yet (their partition and age since created): a batch pending with no
    node in flight was left out of the response that should have settled it."""
    error: Exception | None = None
    for _ in range(3):  # the sets may change while read
        try:
            sender = pub._producer._sender
            accumulator = pub._producer._message_accumulator
            now = time.monotonic()
            pending = [
                f"{b.tp.topic}[{b.tp.partition}] {now - b._ctime:.1f} s" for b in list(accumulator._pending_batches)
            ]
            queued = {f"{tp.topic}[{tp.partition}]": len(q) for tp, q in list(accumulator._batches.items()) if q}
            nodes = sorted(sender._in_flight)
            return f"producer: in flight to nodes {nodes}, sent and unsettled {pending}, queued {queued}"
        except Exception as exc:  # changed while read, or a client version this was not written for
            error = exc
    return f"producer state unreadable: {error!r}"


def _awaits(coro: object) -> list[str]:
    """A suspended coroutine's chain of awaits, outermost first (a task's `get_stack` gives only
    its own frame: the coroutines it awaits are reached through `cr_await`)."""
    frames = []
    while len(frames) < 12 and (frame := getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)):
        frames.append(traceback.FrameSummary(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return _frames(frames)


def _frames(summary: Sequence[traceback.FrameSummary]) -> list[str]:
    return [f"{f.name} ({f.filename.rsplit('/', 2)[-1]}:{f.lineno})" for f in summary]


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
