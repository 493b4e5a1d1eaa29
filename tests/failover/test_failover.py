"""A worker writing through a real failover of a pg_auto_failover formation (issue 20): planned
failovers back and forth, and a crash of the whole primary node. The worker is told every node
(`host=a,b`, `target_session_attrs=read-write`) and is never restarted; the oracle is what the
traffic sent (`eventsink verify` against the topics, ledger counters, chat counters, dead
letters: only the invalid records the traffic made), and every node must still shut down."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import orjson
import psycopg
import pytest

from tests.failover.formation import Formation, Node
from tests.faults.traffic import Traffic, oracle, settled
from tests.helpers import Scenario, WorkerProcess, ledger_totals, wait_until
from tests.web import get, samples, total

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# A client bound shorter than the default (120 s), so that a stuck connection would show within
# the test; connection attempts and retries as the other fault tests have them.
WORKER_ENV = {
    "EVENTSINK_DB_TRANSACTION_TIMEOUT_S": "15",
    "EVENTSINK_DB_CONNECT_TIMEOUT_S": "3",
    "EVENTSINK_RETRY_MAX_S": "1",
}


def worker(s: Scenario, **extra: str) -> WorkerProcess:
    return WorkerProcess(s.env(**{**WORKER_ENV, **extra}), s.data_dir / "worker.log").start()


def events(s: Scenario) -> int:
    return sum(ledger_totals(s.dsn, s.group, t)["events"] for t in (s.topic, s.chat_topic, s.analysis_topic))


def progressed(s: Scenario, since: int) -> bool:
    try:
        return events(s) > since
    except psycopg.Error:  # no primary at this moment
        return False


@dataclass
class Watch:
    """From `started` (a failover begun, a node killed): when a node other than `old` first
    takes writes (out of recovery, and no longer read-only: pg_auto_failover keeps a promoted
    node read-only until the old primary is known demoted), when the worker's first commit lands
    on it, and what /healthz said meanwhile."""

    f: Formation
    s: Scenario
    w: WorkerProcess
    old: Node
    started: float = field(default_factory=time.monotonic)
    writable_s: float | None = None
    first_commit_s: float | None = None
    health: list[tuple[int, dict]] = field(default_factory=list)
    _done: threading.Event = field(default_factory=threading.Event)

    def run(self, timeout: float = 150) -> Watch:
        base = None
        deadline = self.started + timeout
        while self.first_commit_s is None and time.monotonic() < deadline:
            status, body = get(f"{self.w.web}/healthz")
            if status:
                self.health.append((status, orjson.loads(body)))
            for node in self.f.nodes:
                if node is self.old:
                    continue
                try:
                    with psycopg.connect(node.dsn, autocommit=True, connect_timeout=1) as conn:
                        row = conn.execute(
                            "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::bool, "
                            "(SELECT coalesce(sum(events), 0) FROM "
                            "eventsink.offsets_ledger WHERE consumer_group = %s)",
                            (self.s.group,),
                        ).fetchone()
                except psycopg.Error:
                    continue
                assert row is not None
                if row[0]:
                    continue
                if base is None:
                    base, self.writable_s = row[1], time.monotonic() - self.started
                elif row[1] > base:
                    self.first_commit_s = time.monotonic() - self.started
            time.sleep(0.1)
        return self


def watch(pool: ThreadPoolExecutor, f: Formation, s: Scenario, w: WorkerProcess, old: Node) -> Future[Watch]:
    return pool.submit(Watch(f, s, w, old).run)


def assert_exact(s: Scenario, traffic: Traffic) -> None:
    traffic.stop()
    settled(s, traffic, timeout=240)
    oracle(s)  # every event once, chat sessions' counters, ledger counters, dead letters as sent


def test_planned_failovers_back_and_forth(ha_scenario: Scenario, formation: Formation, record_property) -> None:  # type: ignore[no-untyped-def]
    s, f = ha_scenario, formation
    w = worker(s)
    traffic = Traffic(s, metrics=1500, conversations=60, analyses=20, rate=300, seed=700, until_stopped=True).start()
    timings = []
    try:
        with ThreadPoolExecutor(1) as pool:
            for n in range(4):
                old = f.settled()
                before = events(s)
                wait_until(lambda b=before: progressed(s, b), 120, 0.1, f"a commit before failover {n + 1}")
                pending = watch(pool, f, s, w, old)
                f.perform_failover()
                seen = pending.result(200)
                assert seen.first_commit_s is not None, f"no commit on the new primary after failover {n + 1}"
                assert f.settled() is not old
                timings.append((seen.writable_s, seen.first_commit_s))
                assert traffic.alive(), "the traffic ended before the failovers were over"
        assert_exact(s, traffic)
        assert w.alive(), "the worker died: it must ride through a failover"
        assert not [e for e in w.logs() if e.get("event") == "partition pipeline crashed"]
    finally:
        if traffic.alive():
            traffic.stop()
        w.stop()
    record_property("failover_timings_s", timings)
    print("planned failovers: (new primary writable, first commit on it) seconds after the command:", timings)
    # A node kept alive by a backend that cannot exit (a session-lived temporary table waiting for
    # a promoted synchronous standby) would not finish a fast shutdown.
    assert f.stop() == {"node1": True, "node2": True, "monitor": True}


def test_primary_node_crash(ha_scenario: Scenario, formation: Formation, record_property) -> None:  # type: ignore[no-untyped-def]
    s, f = ha_scenario, formation
    # /healthz answers 503 after 3 s without a primary (a supervisor would restart the worker);
    # run alone, the worker keeps going and must recover by itself.
    w = worker(s, EVENTSINK_DB_UNREACHABLE_UNHEALTHY_S="3")
    traffic = Traffic(s, metrics=1500, conversations=60, analyses=20, rate=300, seed=800, until_stopped=True).start()
    try:
        old = f.settled()
        wait_until(lambda: progressed(s, 0), 120, 0.1, "first commits")
        wait_until(lambda: get(f"{w.web}/healthz")[0] == 200, 60, what="a healthy worker")
        retries_before = total(samples(w), "eventsink_batch_retries_total")
        with ThreadPoolExecutor(1) as pool:
            seeing = Watch(f, s, w, old)
            pending = pool.submit(seeing.run)
            # The watch has read /healthz (healthy) once before the crash.
            wait_until(lambda: seeing.health, 30, 0.05, "the watch's first reading of /healthz")
            f.crash(old)
            seen = pending.result(200)
        assert seen.first_commit_s is not None, "no commit on the new primary after the crash"
        # While no primary was reachable, /healthz said so, and went 503 past the bound.
        said = [body.get("database", {}) for _, body in seen.health]
        assert any("no primary reachable" in v for d in said for v in d.values()), said[-3:]
        assert any(status == 503 for status, _ in seen.health), [b.get("problems") for _, b in seen.health][-3:]
        assert total(samples(w), "eventsink_batch_retries_total") > retries_before
        wait_until(lambda: get(f"{w.web}/healthz")[0] == 200, 60, what="/healthz back to 200 after the failover")
        assert_exact(s, traffic)
        assert w.alive(), "the worker died: it must ride through a failover"
    finally:
        if traffic.alive():
            traffic.stop()
        w.stop()
    record_property("crash_timings_s", (seen.writable_s, seen.first_commit_s))
    print(f"crash: new primary writable after {seen.writable_s} s, first commit on it after {seen.first_commit_s} s")
    clean = f.stop()
    assert clean["node2"] and clean["monitor"], clean  # node1, the crashed one, had nothing left
