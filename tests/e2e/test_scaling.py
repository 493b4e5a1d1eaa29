"""Several workers in one consumer group: partitions shared, rebalances mid-stream, nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime

import psycopg
import pytest

from tests.helpers import Scenario, WorkerProcess, leader, ledger_totals, shared_by, wait_applied, wait_until
from tests.pgbouncer import Route
from tests.web import json_body
from tests.workload import Feeder, Sent, assert_exactly_once, create_topics, publish

pytestmark = pytest.mark.e2e


def readyz(port: str) -> dict:
    return json_body(f"http://127.0.0.1:{port}/readyz")


def test_workers_joining_and_leaving_mid_stream_apply_everything_once(scenario: Scenario, route: Route) -> None:
    """A worker joins, then one leaves, while records flow: every event applied once, and nothing in
    either worker's log at error level (a rebalance is routine: nobody must be called for it).
    Directly connected, and through PgBouncer in transaction pooling (two workers' pools share its
    three server connections)."""
    s, sent = scenario, Sent()
    create_topics(s)
    dsn = route(s.worker_dsn)
    first = WorkerProcess(s.env(dsn), s.data_dir / "first.log").start()
    feeder = Feeder(s, sent, chunk=500, rate=500, invalid=0.01, seed=31).start()
    second = None
    try:
        wait_until(lambda: first.assigned(s.topic), 60, what="the first worker's assignment")
        wait_until(lambda: applied(s) > 0, 60, what="the first worker's commits")
        second = WorkerProcess(s.env(dsn), s.data_dir / "second.log").start()  # joins mid-stream
        wait_until(lambda: shared_by(s.topic, first, second), 90, what="the partitions split")
        # Its partitions come before its "worker ready" (table recovery, then the ready check): the
        # one stopped below may be this one, and it must have said ready before it goes.
        wait_until(lambda: second.logged("worker ready") >= 1, 60, what="the second worker ready")
        split_at = applied(s)
        wait_until(lambda: applied(s) > split_at, 60, what="commits after the split")
        assert feeder.alive(), "the stream should still be flowing"
        # The one that leaves is the one that does not lead the group (`tests.helpers.leader`).
        staying = leader(s.topic, first, second)
        leaving = second if staying is first else first
        assert leaving.stop() == 0  # leaves mid-stream
        wait_until(
            lambda: sorted(staying.assigned(s.topic)[-1]) == [0, 1, 2, 3],
            90,
            what="the worker that stays to take every partition",
        )
        left_at = applied(s)
        wait_until(lambda: applied(s) > left_at, 60, what="commits after the first worker left")
        feeder.stop()
        publish(s, sent, 500, seed=1033)
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets, timeout=120)
        assert_exactly_once(s, sent)
        assert staying.stop() == 0
    finally:
        stop_all(feeder, first, second)
    for w in (first, second):
        assert w is not None and w.logged("worker ready") >= 1
        paging = [e for e in w.logs() if e.get("level") not in ("debug", "info", "warning")]
        assert paging == [], f"{w.log_path.name}: {paging[:3]}"


def stop_all(feeder: Feeder, *workers: WorkerProcess | None) -> None:
    """At a test's end, whatever happened: the feeder, then the workers still running."""
    if feeder.alive():
        feeder.stop()
    for w in workers:
        if w is not None and w.alive():
            w.stop()


def applied(s: Scenario) -> int:
    return ledger_totals(s.dsn, s.group, s.topic)["events"]


def test_processes_are_supervised_restarted_and_stopped_together(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    env = s.env()
    base = int(env["EVENTSINK_WEB_PORT"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker", "--processes", "2"],
        env=env,
        stdout=open(s.data_dir / "supervisor.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        ports = [str(base), str(base + 1)]
        wait_until(lambda: all(readyz(p).get("ready") for p in ports), 90, what="both processes ready")
        split = [readyz(p)["assigned"][s.topic] for p in ports]
        assert sorted(split[0] + split[1]) == [0, 1, 2, 3] and all(split)
        victim = readyz(ports[0])["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: readyz(ports[0]).get("pid") not in (None, victim), 90, what="the killed process replaced")
        publish(s, sent, 1500, invalid=0.02, seed=32)
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
        assert_exactly_once(s, sent)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
    assert not any(readyz(p) for p in (str(base), str(base + 1))), "a worker process outlived its supervisor"
    log = (s.data_dir / "supervisor.log").read_text()
    assert "worker process exited; restarting it" in log and "worker processes stopped" in log


def test_a_changelog_left_behind_by_a_partition_change_is_refused_then_rebuilt(scenario: Scenario) -> None:
    """After partitions are added to a topic (Tansu cannot: CreatePartitions is not implemented, so
    the test builds the same state directly), the old dedupe changelog no longer matches; the
    worker refuses to start and says what to do; deleting the changelog is enough."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    from streams.tools.topics import CHANGELOG_CONFIG, TopicSpec, ensure_topics

    s, sent = scenario, Sent()
    create_topics(s, partitions=6)
    changelog = f"{s.group}-dedupe-metric-changelog"
    asyncio.run(ensure_topics([s.bootstrap], [TopicSpec(changelog, 4, config=CHANGELOG_CONFIG)]))
    refused = WorkerProcess(s.env(), s.data_dir / "refused.log").start()
    assert refused.proc.wait(60) == 2  # type: ignore[union-attr]
    error = next(e for e in refused.logs() if e.get("event", "").startswith("a source topic and its dedupe"))
    assert (error["changelog"], error["changelog_partitions"], error["source_partitions"]) == (changelog, 4, 6)

    async def delete_changelog() -> None:
        client = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap)
        await client.start()
        try:
            await client.delete_topics([changelog])
        finally:
            await client.close()

    asyncio.run(delete_changelog())
    w = WorkerProcess(s.env(), s.data_dir / "after.log").start()
    try:
        publish(s, sent, 1200, seed=42)
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
        assert_exactly_once(s, sent)
    finally:
        w.stop()


def _ledger_clock(s: Scenario) -> str:
    """Note every advance of the scenario group's ledger rows, at COMMIT, with PostgreSQL's clock:
    the ledger's own history, not the worker's word. Returns the table it writes; dropped with
    `_drop_ledger_clock`."""
    table = f"public.ledger_clock_{s.name}"
    with psycopg.connect(s.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE UNLOGGED TABLE {table} (partition integer, last_offset bigint, committed_at timestamptz)")
        conn.execute(
            f"CREATE FUNCTION public.note_ledger_{s.name}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER"
            f" AS $$ BEGIN INSERT INTO {table} VALUES (NEW.partition, NEW.last_offset, clock_timestamp());"
            " RETURN NULL; END $$"
        )
        conn.execute(
            f"CREATE CONSTRAINT TRIGGER ledger_clock_{s.name} AFTER UPDATE ON eventsink.offsets_ledger"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
            f" WHEN (NEW.consumer_group = '{s.group}' AND NEW.topic = '{s.topic}'"
            " AND NEW.last_offset > OLD.last_offset)"
            f" EXECUTE FUNCTION public.note_ledger_{s.name}()"
        )
    return table


def _drop_ledger_clock(s: Scenario) -> None:
    with psycopg.connect(s.dsn, autocommit=True) as conn:
        conn.execute(f"DROP TRIGGER IF EXISTS ledger_clock_{s.name} ON eventsink.offsets_ledger")
        conn.execute(f"DROP FUNCTION IF EXISTS public.note_ledger_{s.name}()")
        conn.execute(f"DROP TABLE IF EXISTS public.ledger_clock_{s.name}")


def _at(entry: dict) -> datetime:
    return datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00"))


@pytest.mark.parametrize("reading", [True, False], ids=["reading", "not-reading"])
def test_partitions_that_stay_keep_committing_through_a_rebalance(scenario: Scenario, reading: bool) -> None:
    """When a second worker joins, the first gives up every partition (eager rebalancing) and gets
    those it keeps back only once the group has formed again (Tansu holds the join 3 s). Reading
    through the rebalance, it commits meanwhile, on the partitions it keeps, records it had not
    delivered when the rebalance began: the ledger's history (a trigger's, PostgreSQL's clock) has
    such commits before the worker's new assignment. Turned off, it reads nothing outside the
    group. Every event applied once either way."""
    s = scenario
    sent = Sent(tenants=[str(uuid.uuid4()) for _ in range(40)])  # every partition busy
    create_topics(s)
    clock = _ledger_clock(s)
    option = {"EVENTSINK_READ_DURING_REBALANCE": str(reading).lower()}
    first = WorkerProcess(s.env(**option), s.data_dir / "first.log").start()
    feeder = Feeder(s, sent, chunk=500, rate=800, seed=61).start()
    second = None
    try:
        wait_until(lambda: applied(s) > 0, 60, what="the first worker's commits")
        second = WorkerProcess(s.env(**option), s.data_dir / "second.log").start()  # its own web port
        wait_until(lambda: len(first.assigned(s.topic)) >= 2, 90, what="the first worker's second assignment")
        feeder.stop()
        publish(s, sent, 500, seed=1061)
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets, timeout=120)
        assert_exactly_once(s, sent)
        starts = [e for e in first.logs() if e.get("event") == "reading through the rebalance"]
        if not reading:
            assert starts == []
            return
        assignments = [e for e in first.logs() if e.get("event") == "partitions assigned" and e["topic"] == s.topic]
        before, after = set(assignments[0]["partitions"]), set(assignments[1]["partitions"])
        kept = before & after
        assert kept, f"the first worker kept none of {sorted(before)}"
        began, reassigned = _at(starts[0]), _at(assignments[1])
        # Where the reading began, per kept partition: what the group's consumer had delivered.
        prefix = f"{s.topic}["
        read_from = {
            int(name[len(prefix) : -1]): offset
            for name, offset in starts[0]["partitions"].items()
            if name.startswith(prefix) and int(name[len(prefix) : -1]) in kept
        }
        assert read_from, f"nothing of the kept partitions {sorted(kept)} was read: {starts[0]['partitions']}"
        with psycopg.connect(s.dsn) as conn:
            history = conn.execute(f"SELECT partition, last_offset, committed_at FROM {clock}").fetchall()
        during = [
            (p, last, at)
            for p, last, at in history
            if p in read_from and last >= read_from[p] and began < at < reassigned
        ]
        assert during, (
            f"no commit of a kept partition past where the reading began ({read_from}) between "
            f"{began} and the new assignment at {reassigned}: {sorted(history)[-8:]}"
        )
        assert first.logged("read through the rebalance") >= 1
    finally:
        stop_all(feeder, first, second)
        _drop_ledger_clock(s)
