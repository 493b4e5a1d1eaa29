"""Exactly-once under faults: real worker processes, the real broker and database, broken on purpose
while mixed traffic flows. The oracle is `eventsink verify` on the three topics: every valid
event applied once, chat counters equal to their messages, analysis rows equal to the in-order
result, every invalid record in its DLQ, nothing pending."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time

import psycopg
import pytest
from aiokafka import AIOKafkaProducer

from streams.dev.loadgen.metric import poison_records
from tests.faults.traffic import Traffic, oracle, settled
from tests.helpers import Scenario, WorkerProcess, leader, ledger_totals, read_topic, shared_by, wait_until
from tests.proxy import TcpProxy, pg_address, proxied
from tests.workload import create_topics

pytestmark = pytest.mark.e2e


RETRYING = "batch not committed; retrying"


def worker(s: Scenario, tag: str, **env: str) -> WorkerProcess:
    dsn = env.pop("DATABASE_URL", None)
    return WorkerProcess(s.env(dsn, EVENTSINK_BATCH_SIZE="300", **env), s.data_dir / f"{tag}.log").start()


def progressed(s: Scenario, since: int) -> bool:
    return sum(ledger_totals(s.dsn, s.group, t)["events"] for t in (s.topic, s.chat_topic, s.analysis_topic)) > since


def sessions(s: Scenario) -> int:
    """The worker's sessions on the scenario's database: its pools name them
    `eventsink-<group>-<pool>` (`application_name`), whichever role it connects as."""
    with psycopg.connect(s.dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND starts_with(application_name, %s)",
            (f"eventsink-{s.group}-",),
        ).fetchone()
    assert row is not None
    return int(row[0])


def applied(s: Scenario) -> int:
    return sum(ledger_totals(s.dsn, s.group, t)["events"] for t in (s.topic, s.chat_topic, s.analysis_topic))


def test_kill_9_five_times_in_the_middle_of_batches(scenario: Scenario) -> None:
    s = scenario
    create_topics(s)
    # Rounds of ~5 s of traffic until the five kills are over (each: start, join, a commit, kill).
    traffic = Traffic(s, metrics=500, conversations=30, analyses=15, rate=150, seed=100, until_stopped=True).start()
    for round_ in range(5):
        w = worker(s, f"w{round_}")
        before = applied(s)
        wait_until(lambda b=before: progressed(s, b), 90, 0.05, "a commit")
        time.sleep(random.Random(round_).uniform(0.2, 1.5))  # somewhere in the next batches: the point of the test
        assert traffic.alive(), f"the traffic ended before kill {round_ + 1}"
        w.kill9()
    traffic.stop()
    last = worker(s, "last")
    try:
        settled(s, traffic)
        oracle(s, traffic)
    finally:
        last.stop()


def test_three_workers_one_killed_one_added_one_stopped_one_fenced_out(scenario: Scenario) -> None:
    s = scenario
    create_topics(s)
    traffic = Traffic(s, metrics=1000, conversations=50, analyses=30, rate=300, seed=200, until_stopped=True).start()
    a, b, c = (worker(s, tag) for tag in "abc")
    everyone = [a, b, c]
    try:
        wait_until(lambda: progressed(s, 0), 90, what="first commits")
        a.kill9()  # dies mid-batch
        d = worker(s, "d")  # joins mid-stream
        everyone.append(d)
        # Until the group has dropped the dead worker (Tansu drops a silent member only when another
        # member's request finds it past its session): one of b, c and d then leaves a group whose
        # partitions they share, a's included.
        wait_until(lambda: shared_by(s.topic, b, c, d), 90, what="the dead worker's partitions taken over")
        # Tansu 0.6.0 keeps a leader that leaves while the group re-forms as its leader, and then no
        # rebalance ever completes (`Inner<Forming>::leave`); a member's re-join after an
        # assignment carries new metadata (Faust's holds the assignment) and Tansu answers it with
        # a new generation, so the group may re-form at any time (failed so in the project's CI).
        # The worker that leaves is one that does not lead: the leader stays the leader until it
        # leaves or misses its session.
        lead = leader(s.topic, b, c, d)
        stopped, x, y = sorted((b, c, d), key=lambda w: w is lead)  # the leader last
        assert stopped.stop() == 0  # leaves cleanly mid-stream
        # Fenced out: frozen past the session timeout, its partitions go to the other; thawed, it
        # finishes the batch it was writing, late. Frozen once the group is x and y alone: frozen
        # during a rebalance, it would hold the rebalance for its timeout, not the session's.
        wait_until(lambda: shared_by(s.topic, x, y), 90, what="the partitions shared by the two left")
        os.kill(x.pid, signal.SIGSTOP)
        wait_until(lambda: sorted(y.assigned(s.topic)[-1]) == [0, 1, 2, 3], 90, what="the frozen worker's partitions")
        os.kill(x.pid, signal.SIGCONT)
        assert traffic.alive(), "the traffic ended before the faults were over"
        traffic.stop()
        settled(s, traffic)
        oracle(s, traffic)
    finally:
        for w in everyone:
            if w.alive():
                os.kill(w.pid, signal.SIGCONT)
                w.stop()


def test_postgresql_unreachable_longer_than_a_batch_timeout(scenario: Scenario) -> None:
    s = scenario
    create_topics(s)
    with TcpProxy(*pg_address(s.dsn)) as proxy:
        w = worker(s, "w", DATABASE_URL=proxied(s.worker_dsn, proxy))
        traffic = Traffic(
            s, metrics=1000, conversations=50, analyses=30, rate=300, seed=300, until_stopped=True
        ).start()
        try:
            wait_until(lambda: progressed(s, 0), 90, what="first commits")
            proxy.cut()
            # What the server had received before the cut it still carries out (a ledger advance
            # + COMMIT sent as one query among it): counted once the worker's sessions are gone.
            wait_until(lambda: sessions(s) == 0, 30, what="the worker's sessions to end")
            cut_at, retried = applied(s), w.logged(RETRYING)
            # Longer than a batch timeout (EVENTSINK_BATCH_MAX_WAIT_MS=200): retries, with backoff.
            wait_until(lambda: w.logged(RETRYING) >= retried + 5, 90, what="five retries")
            assert w.alive() and applied(s) == cut_at and traffic.alive()
            proxy.restore()
            traffic.stop()
            settled(s, traffic)
            oracle(s, traffic)
        finally:
            w.stop()
    assert w.logged(RETRYING) >= 5


def test_a_producer_republishing_the_same_fifth_three_times(scenario: Scenario) -> None:
    s = scenario
    create_topics(s)
    w = worker(s, "w")
    traffic = Traffic(s, metrics=3000, rate=1000, duplicates=0.0, seed=400).start()
    try:
        traffic.join()
        replays: dict[str, dict[int, int]] = {}
        for topic in (s.topic, s.chat_topic, s.analysis_topic):
            records = asyncio.run(read_topic(s.bootstrap, topic))
            fifth = random.Random(topic).sample(records, len(records) // 5)
            replays[topic] = asyncio.run(_republish(s, topic, [(r.key, r.value) for r in fifth] * 3))
        settled(s, traffic, replays)
        reports = oracle(s, traffic)
        assert sum(r.totals().seen for r in reports.values()) > sum(r.totals().unique for r in reports.values()) * 1.5
    finally:
        w.stop()


def test_ten_thousand_poison_records_while_valid_traffic_flows(scenario: Scenario) -> None:
    s = scenario
    create_topics(s)
    w = worker(s, "w")
    try:
        traffic = Traffic(
            s, metrics=1000, conversations=30, analyses=20, rate=200, invalid=0.0, seed=500, until_stopped=True
        ).start()
        wait_until(lambda: progressed(s, 0), 90, what="first commits")
        # The flood falls on traffic that flows: its first round acknowledged on all three topics.
        # A CI run flooded a worker whose metric traffic had not flowed yet (its publisher waiting
        # for the broker to acknowledge its first records) and saw no valid row, for that reason.
        try:
            wait_until(lambda: traffic.rounds >= 1 or not traffic.alive(), 120, what="the traffic's first round")
            if not traffic.alive():
                traffic.join()  # raises what ended it
        except AssertionError as exc:
            raise AssertionError(f"{exc}: sent in the round {traffic.sending()}; {traffic.where()}") from None
        poison = poison_records(random.Random(501), "3f2b8c1e-8d4a-4c3b-9f7e-2a1b0c9d8e7f", 10_000)
        assert len({kind for kind, _, _ in poison}) >= 8
        rows_before = _valid_rows(s)
        # Valid rows must be applied while the flood is still being dead-lettered, not only after
        # it: sampled from the ledger from the flood's first record until the last is
        # dead-lettered (rows read first, then dead letters: a sample with rows up and dead
        # letters short of the flood shows both at once). Not a fixed window: a CI host running
        # eight test processes on two cores has held the whole worker up for the 10 s of
        # publishing.
        # (seconds, new valid rows, dead letters, traffic rounds, the round's records sent per topic)
        samples: list[tuple[float, int, int, int, tuple[int, int, int]]] = []
        began = time.monotonic()

        def dead_lettered() -> bool:
            rows, dead = _valid_rows(s), _dead_letters(s)
            at = round(time.monotonic() - began, 1)
            samples.append((at, rows - rows_before, dead, traffic.rounds, traffic.sending()))
            return dead >= len(poison)

        sampler = threading.Thread(
            target=wait_until, args=(dead_lettered, 180), kwargs={"what": "the flood dead-lettered"}, name="sampler"
        )
        sampler.start()
        flood = asyncio.run(_republish(s, s.topic, [(k, v) for _, k, v in poison], per_second=1000))
        published_s = round(time.monotonic() - began, 1)
        assert traffic.alive(), "the flood should fall while valid traffic flows"
        sampler.join()
        assert samples[-1][2] >= len(poison), f"the flood was not dead-lettered within 180 s: {samples[-1]}"
        during = [new for _, new, dead, *_ in samples if dead < len(poison)]
        assert any(n > 0 for n in during), (
            f"valid traffic waited for the flood: no valid row applied in {len(during)} samples before the "
            f"last poison record was dead-lettered; flood published in {published_s} s; samples (s, new valid "
            f"rows, dead letters, traffic rounds, sent in the round: metric, chat, analysis): {samples[:4]} ... "
            f"{samples[-4:]}; the traffic thread: {traffic.where()}"
        )
        traffic.stop()
        settled(s, traffic, {s.topic: flood})
        reports = oracle(s, traffic)
        assert reports[s.topic].totals().in_dlq >= 10_000
    finally:
        w.stop()
    dead = asyncio.run(read_topic(s.bootstrap, s.dlq_topic))
    assert len({(d.info.source_partition, d.info.source_offset) for d in dead}) == 10_000


def _valid_rows(s: Scenario) -> int:
    return sum(ledger_totals(s.dsn, s.group, t)["rows_applied"] for t in (s.topic, s.chat_topic, s.analysis_topic))


def _dead_letters(s: Scenario) -> int:
    """Of the metric topic, where the flood goes (the valid traffic has no invalid record)."""
    return ledger_totals(s.dsn, s.group, s.topic)["dead_letters"]


def test_a_slow_database_means_backpressure_not_memory(scenario: Scenario, record_property) -> None:  # type: ignore[no-untyped-def]
    s = scenario
    create_topics(s)
    with TcpProxy(*pg_address(s.dsn)) as proxy:
        proxy.set_delay(0.02)  # every chunk through the proxy waits 20 ms, both ways
        w = worker(s, "w", DATABASE_URL=proxied(s.worker_dsn, proxy))
        rss = RssSampler(w.pid).start()
        try:
            wait_until(lambda: w.assigned(s.topic), 90, what="assigned")
            traffic = Traffic(s, metrics=12_000, conversations=150, analyses=100, rate=3000, seed=600).start()
            traffic.join()
            backlog = traffic.records - applied(s)
            # The worker works through part of the backlog at the slow database's pace.
            wait_until(lambda: traffic.records - applied(s) <= backlog // 2, 120, what="half the backlog applied")
            proxy.set_delay(0)
            settled(s, traffic)
            oracle(s, traffic)
        finally:
            rss.stop()
            w.stop()
    record_property("peak_rss_mb", round(rss.peak))
    print(
        f"slow database: peak RSS {rss.peak:.0f} MB ({len(rss.samples)} samples), backlog when the traffic "
        f"ended {backlog} of {traffic.records} records"
    )
    assert backlog > 0, "the database was not slow enough to make a backlog"
    assert rss.peak < 400, f"worker RSS grew to {rss.peak:.0f} MB under backpressure"


class RssSampler:
    """The resident set of a process, sampled twice a second from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def peak(self) -> float:
        return max(self.samples, default=0.0)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
                self.samples.append(kb / 1024)
            except (OSError, StopIteration):
                pass


async def _republish(
    s: Scenario, topic: str, records: list[tuple[bytes | None, bytes | None]], per_second: float | None = None
) -> dict[int, int]:
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap, enable_idempotence=False, linger_ms=5)
    await producer.start()
    last: dict[int, int] = {}
    chunk = 500 if per_second else 2000
    try:
        for start in range(0, len(records), chunk):
            began = time.monotonic()
            futures = [await producer.send(topic, value=v, key=k) for k, v in records[start : start + chunk]]
            for md in await asyncio.gather(*futures):
                last[md.partition] = max(md.offset, last.get(md.partition, -1))
            if per_second:
                await asyncio.sleep(max(0.0, chunk / per_second - (time.monotonic() - began)))
    finally:
        await producer.stop()
    return last
