"""Real `eventsink worker` processes, a real broker, a real PostgreSQL: exactly-once end to end."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from schemas.deadletter import Reason
from streams.dev.embedded import EmbeddedKafka
from streams.worker.run import SHUTDOWN_MARGIN_S
from tests.helpers import (
    Scenario,
    WorkerProcess,
    commit_group_offsets,
    count_by_tenant,
    ledger,
    ledger_totals,
    read_topic,
    shared_by,
    wait_applied,
    wait_until,
)
from tests.pgbouncer import Route
from tests.proxy import TcpProxy, pg_address, proxied
from tests.web import get, json_body, samples, total
from tests.workload import Sent, assert_exactly_once, create_topics, metric_json, publish, send_raw

pytestmark = pytest.mark.e2e


def worker(s: Scenario, tag: str = "w", **env: str) -> WorkerProcess:
    dsn = env.pop("DATABASE_URL", None)
    return WorkerProcess(s.env(dsn, **env), s.data_dir / f"{tag}.log").start()


def wait_applied_exactly_once(s: Scenario, sent: Sent) -> None:
    """Wait until the group applied every record sent, then `assert_exactly_once`."""
    wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    assert_exactly_once(s, sent)


def dlq_by_source(s: Scenario) -> Counter[tuple[int, int]]:
    records = asyncio.run(read_topic(s.bootstrap, s.dlq_topic))
    return Counter((r.info.source_partition, r.info.source_offset) for r in records)


def logged(w: WorkerProcess, event: str) -> bool:
    return any(e.get("event") == event for e in w.logs())


def drained(w: WorkerProcess, topic: str | None = None) -> dict[str, int]:
    topic = topic or w.env["EVENTSINK_METRICS_TOPIC"]
    entries = [e for e in w.logs() if e.get("event") == "drained" and e.get("topic") == topic]
    assert entries, "the worker did not log its drain"
    return entries[-1]


def test_events_land_exactly_once_and_invalid_ones_reach_the_dlq(scenario: Scenario, route: Route) -> None:
    """Directly connected, and through PgBouncer in transaction pooling."""
    s, sent = scenario, Sent()
    create_topics(s)
    publish(s, sent, 3000, duplicates=0.1, invalid=0.05, seed=7)
    # Two tenants using the same dedupe_id both persist.
    a, b = sent.tenants[0], sent.tenants[1]
    send_raw(
        s, sent, [(a.encode(), metric_json(a, "shared")), (b.encode(), metric_json(b, "shared"))], unique={a: 1, b: 1}
    )
    w = worker(s, DATABASE_URL=route(s.worker_dsn))
    try:
        wait_applied_exactly_once(s, sent)
    finally:
        assert w.stop() == 0
    source = {(r.partition, r.offset): r for r in asyncio.run(read_topic(s.bootstrap, s.topic))}
    dead = asyncio.run(read_topic(s.bootstrap, s.dlq_topic))
    assert len(dead) == sent.invalid
    assert len({(d.info.source_partition, d.info.source_offset) for d in dead}) == sent.invalid
    reasons = Counter(d.info.reason for d in dead)
    assert set(reasons) <= {r.value for r in Reason} and len(reasons) >= 4, reasons
    for d in dead:
        original = source[(d.info.source_partition, d.info.source_offset)]
        assert (d.key, d.value) == (original.key, original.value), "the DLQ keeps the original bytes"
        assert d.info.source_topic == s.topic and d.info.detail and d.info.consumer_group == s.group
        assert datetime.fromisoformat(d.info.failed_at).tzinfo is not None
    # valid rows + duplicates + DLQ records == records produced
    t = ledger_totals(s.dsn, s.group, s.topic)
    assert t["rows_applied"] + t["duplicates"] + t["dead_letters"] == sent.sent


_DROP = object()


def body(tenant: str, **change: object) -> bytes:
    fields = {"tenant_id": tenant, "dedupe_id": "d", "name": "n", "value": 1, "occurred_at": "2024-05-01T12:00:00Z"}
    fields = {**fields, "tags": {}, **change}
    return orjson.dumps({k: v for k, v in fields.items() if v is not _DROP})


# kind -> (value for a tenant, expected reason, expected words in the detail)
INVALID = {
    "not_json": (lambda t: b"{oops", "invalid_json", "not JSON"),
    "not_an_object": (lambda t: b'["a", 1]', "not_an_object", "list"),
    "missing_field": (lambda t: body(t, name=_DROP), "invalid_event", "name: Field required"),
    "bad_uuid": (lambda t: body("tenant-one"), "invalid_event", "tenant_id"),
    "empty_dedupe_id": (lambda t: body(t, dedupe_id=""), "invalid_event", "dedupe_id"),
    "long_dedupe_id": (lambda t: body(t, dedupe_id="x" * 129), "invalid_event", "dedupe_id"),
    "nan": (lambda t: body(t, value=0.5).replace(b"0.5", b"NaN"), "invalid_event", "NaN"),
    "bad_timestamp": (lambda t: body(t, occurred_at="01/05/2024 12:00"), "invalid_event", "occurred_at"),
    "not_utf8": (lambda t: b'{"tenant_id": "\xff\xfe"}', "invalid_utf8", "UTF-8"),
}


def test_every_kind_of_invalid_record_reaches_the_dlq_with_its_reason(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    tenant = sent.tenants[0]
    kinds = list(INVALID)
    records = [(tenant.encode(), INVALID[k][0](tenant)) for k in kinds]
    records.append((str(uuid.uuid4()).encode(), metric_json(tenant, "keyed-elsewhere")))  # key_mismatch
    valid = [(tenant.encode(), metric_json(tenant, f"ok-{i}")) for i in range(5)]
    placed = send_raw(s, sent, records + valid, partition=0, unique={tenant: len(valid)})
    sent.invalid += len(records)
    w = worker(s)
    try:
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    finally:
        w.stop()
    dead = {
        (d.info.source_partition, d.info.source_offset): d for d in asyncio.run(read_topic(s.bootstrap, s.dlq_topic))
    }
    for kind, where in zip([*kinds, "key_mismatch"], placed, strict=False):
        reason, detail = (INVALID[kind][1], INVALID[kind][2]) if kind in INVALID else ("key_mismatch", "tenant_id")
        assert dead[where].info.reason == reason, kind
        assert detail in dead[where].info.detail, (kind, dead[where].info.detail)
    # valid rows + DLQ records == records produced
    assert count_by_tenant(s.dsn, [tenant]) == {tenant: len(valid)}
    assert len(valid) + len(dead) == sent.sent
    assert_exactly_once(s, sent)


def test_tenant_ids_and_microseconds_survive_the_pipeline(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    tenant = sent.tenants[0]
    send_raw(
        s,
        sent,
        [(tenant.encode(), metric_json(tenant, "precise", occurred_at="2024-02-29T23:59:59.999999-05:00"))],
        unique={tenant: 1},
    )
    w = worker(s)
    try:
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    finally:
        w.stop()
    with psycopg.connect(s.dsn) as conn:
        row = conn.execute(
            "SELECT tenant_id, occurred_at, pg_typeof(tenant_id)::text FROM eventsink.metrics_raw WHERE tenant_id = %s",
            (tenant,),
        ).fetchone()
    assert row == (uuid.UUID(tenant), datetime(2024, 3, 1, 4, 59, 59, 999999, tzinfo=UTC), "uuid")


def test_duplicates_are_recognised_by_the_dedupe_table_across_restarts(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    tenant = sent.tenants[0]
    records = [(tenant.encode(), metric_json(tenant, f"e{i}")) for i in range(200)]
    send_raw(s, sent, records, unique={tenant: 200})
    w = worker(s)
    wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    send_raw(s, sent, records)  # a producer retrying everything, new offsets
    wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    assert w.stop() == 0
    assert drained(w)["duplicates_cache"] == 200
    # The table is restored from its changelog: a new process still knows these keys.
    send_raw(s, sent, records)
    w2 = worker(s, "w2")
    wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    assert w2.stop() == 0
    assert drained(w2)["duplicates_cache"] == 200
    assert_exactly_once(s, sent)


def test_kill_9_in_the_middle_of_batches_loses_and_duplicates_nothing(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    publish(s, sent, 6000, duplicates=0.1, invalid=0.01, seed=1)
    for round_ in range(3):
        w = worker(s, f"w{round_}", EVENTSINK_BATCH_SIZE="200")
        before = ledger_totals(s.dsn, s.group, s.topic)["events"]
        wait_until(lambda b=before: ledger_totals(s.dsn, s.group, s.topic)["events"] > b, 60, 0.05, "a commit")
        publish(s, sent, 1000, duplicates=0.2, invalid=0.01)  # while it writes
        w.kill9()
        # What the next worker starts with: the killed one may have applied all it was sent
        # before the kill landed (seen in CI), and a worker with nothing to apply never commits.
        publish(s, sent, 1000, duplicates=0.2, invalid=0.01)
    w = worker(s, "final")
    try:
        wait_applied_exactly_once(s, sent)
    finally:
        w.stop()
    # Dead letters are delivered before their batch commits: a kill can repeat one, never lose one.
    dead = dlq_by_source(s)
    assert len(dead) == sent.invalid


def test_kafka_offsets_ahead_of_the_ledger_lose_nothing(scenario: Scenario) -> None:
    """Faust committed offsets the database never applied (run-ahead); the ledger wins."""
    s, sent = scenario, Sent()
    create_topics(s)
    publish(s, sent, 2000, invalid=0.02, seed=3)
    asyncio.run(commit_group_offsets(s.bootstrap, s.group, s.topic, {p: o + 1 for p, o in sent.last_offsets.items()}))
    w = worker(s)
    try:
        wait_applied_exactly_once(s, sent)
    finally:
        w.stop()


def test_kafka_offsets_ahead_and_the_database_down_at_assignment(scenario: Scenario) -> None:
    """The ledger cannot be read when partitions are assigned: the first batch finds the hole."""
    s, sent = scenario, Sent()
    create_topics(s)
    publish(s, sent, 1000, seed=4)
    asyncio.run(commit_group_offsets(s.bootstrap, s.group, s.topic, {p: o - 50 for p, o in sent.last_offsets.items()}))
    with TcpProxy(*pg_address(s.dsn)) as proxy:
        proxy.cut()
        w = worker(s, DATABASE_URL=proxied(s.worker_dsn, proxy))
        try:
            wait_until(
                lambda: logged(w, "ledger unavailable at assignment; positions will be checked per batch"),
                90,
                what="an assignment while the database is down",
            )
            # A batch fetched from Kafka's (run-ahead) position is in flight before the database
            # returns: a rebalance after the restore would position from the ledger instead and
            # leave the per-batch check unexercised. An in-flight batch finishes even then.
            wait_until(
                lambda: any(
                    e.get("event") == "batch not committed; retrying" and e.get("topic") == s.topic for e in w.logs()
                ),
                60,
                what="a batch failing against the cut database",
            )
            proxy.restore()
            wait_applied_exactly_once(s, sent)
        finally:
            w.stop()
    assert logged(w, "batch would skip records; seeking to the ledger")


def test_redelivered_records_below_the_ledger_change_nothing(scenario: Scenario) -> None:
    """Everything applied, then Kafka's offsets rewound and the ledger unreadable at start:
    every record comes again and the ledger filter drops it: no row, no dead letter twice."""
    s, sent = scenario, Sent()
    create_topics(s)
    publish(s, sent, 1500, duplicates=0.1, invalid=0.03, seed=5)
    w = worker(s)
    wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    assert w.stop() == 0
    asyncio.run(commit_group_offsets(s.bootstrap, s.group, s.topic, dict.fromkeys(sent.last_offsets, 0)))
    with TcpProxy(*pg_address(s.dsn)) as proxy:
        proxy.cut()
        w = worker(s, "again", DATABASE_URL=proxied(s.worker_dsn, proxy))
        try:
            wait_until(
                lambda: logged(w, "ledger unavailable at assignment; positions will be checked per batch"),
                90,
                what="an assignment while the database is down",
            )
            proxy.restore()
            tenant = sent.tenants[0]
            for p in sorted(sent.last_offsets):  # a fresh record behind the replay, per partition
                send_raw(
                    s, sent, [(tenant.encode(), metric_json(tenant, f"after-{p}"))], partition=p, unique={tenant: 1}
                )
            wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
        finally:
            assert w.stop() == 0
    assert drained(w)["redelivered"] >= 1500
    assert_exactly_once(s, sent)
    assert sum(dlq_by_source(s).values()) == sent.invalid


def test_a_database_outage_mid_stream_loses_nothing(scenario: Scenario) -> None:
    s, sent = scenario, Sent()
    create_topics(s)
    password = "pw-" + uuid.uuid4().hex
    with TcpProxy(*pg_address(s.dsn)) as proxy:
        w = worker(s, DATABASE_URL=proxied(s.worker_dsn, proxy, password))
        try:
            publish(s, sent, 1500, invalid=0.02, seed=6)
            wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
            proxy.cut()
            retried = w.logged("batch not committed; retrying")
            publish(s, sent, 1500, invalid=0.02)
            # Several batch timeouts and retries while the database is away.
            wait_until(lambda: w.logged("batch not committed; retrying") >= retried + 3, 90, what="three retries")
            assert w.alive(), "the worker must not crash while the database is down"
            assert ledger_totals(s.dsn, s.group, s.topic)["events"] < sent.sent
            proxy.restore()
            publish(s, sent, 500)
            wait_applied_exactly_once(s, sent)
        finally:
            assert w.stop() == 0
    assert len(dlq_by_source(s)) == sent.invalid
    assert logged(w, "batch not committed; retrying")
    assert password not in w.log_text()


def test_sigterm_while_records_arrive_loses_none(scenario: Scenario) -> None:
    """What arrives after the drain is left to the next owner (counted stale), and comes again."""
    s, sent = scenario, Sent()
    create_topics(s)
    w = worker(s)
    publish(s, sent, 500, seed=8)
    wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    publish(s, sent, 3000, rate=3000)
    assert w.stop(timeout=45) == 0
    done = drained(w)
    assert (
        done["consumed"]
        == done["applied"]
        + done["duplicates_cache"]
        + done["duplicates_db"]
        + done["dead_letters"]
        + done["redelivered"]
        + done["stale"]
    )
    w2 = worker(s, "w2")
    try:
        wait_applied_exactly_once(s, sent)
    finally:
        w2.stop()


def health(w: WorkerProcess) -> dict:
    return json_body(f"{w.web}/healthz")


def test_a_worker_that_cannot_reach_its_database_says_so_and_never_says_ready(scenario: Scenario) -> None:
    s = scenario
    create_topics(s)
    params = conninfo_to_dict(s.worker_dsn)
    params["host"] = "db.invalid"  # a name that never resolves (RFC 6761)
    w = worker(s, "bad-host", DATABASE_URL=make_conninfo(**params))
    unreachable = "the database cannot be reached: nothing is applied until it answers"
    try:
        said = wait_until(
            lambda: [e for e in w.logs() if e.get("event") == unreachable], 90, what="the worker to say what is wrong"
        )
        assert said[0]["level"] == "error" and "db.invalid" in said[0]["where"]
        assert "resolve" in said[0]["error"] and "DATABASE_URL" in said[0]["fix"]
        wait_until(lambda: w.assigned(s.topic), 90, what="partitions assigned all the same")
        report = wait_until(lambda: health(w).get("unreachable"), 60, what="/healthz to report the database")
        assert "db.invalid" in report["database"]
        assert health(w)["status"] != "ok"
    finally:
        assert w.stop() == 0
    assert not any("ready" in str(e.get("event", "")).lower() for e in w.logs() if e.get("level") != "debug")

    good = worker(s, "good")
    try:
        wait_until(lambda: good.logged("worker ready"), 90, what="a worker with a database to say it is ready")
        assert health(good)["status"] == "ok"
    finally:
        good.stop()


def test_a_worker_whose_broker_is_gone_stops_within_the_drain_timeout(scenario: Scenario, tmp_path: Path) -> None:
    """With the broker gone, a worker given SIGTERM took about 65 s (mode waited 60 s for a consumer
    thread that had died): it must be gone within EVENTSINK_DRAIN_TIMEOUT_S + SHUTDOWN_MARGIN_S."""
    s = scenario
    broker = EmbeddedKafka(log_path=tmp_path / "own-tansu.log").start()
    try:
        drain_s = 5
        w = worker(s, "orphan", KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, EVENTSINK_DRAIN_TIMEOUT_S=str(drain_s))
        wait_until(lambda: w.assigned(s.topic), 90, what="the worker's assignment")
        wait_until(lambda: w.logged("worker ready"), 60, what="the worker ready")
    finally:
        broker.stop()
    gone = "the broker cannot be reached: nothing is applied until it answers"
    said = wait_until(lambda: [e for e in w.logs() if e.get("event") == gone], 90, what="the worker to say so")
    assert said[0]["level"] == "error" and broker.bootstrap in said[0]["where"]
    assert "KAFKA_BOOTSTRAP_SERVERS" in said[0]["fix"]
    assert w.proc is not None
    w.proc.send_signal(signal.SIGTERM)
    bound = drain_s + SHUTDOWN_MARGIN_S + 5  # the worker's own deadline, and a margin for a loaded machine
    try:
        w.proc.wait(bound)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {bound}s after SIGTERM") from None
    assert w.proc.returncode in (0, 1)
    library = [e for e in w.logs() if e.get("level") == "error" and not str(e.get("logger", "")).startswith("streams")]
    assert library == [], library[:3]


def test_sigterm_finishes_the_batch_in_flight_and_exits(scenario: Scenario) -> None:
    """Records a worker holds when SIGTERM comes are applied by its drain, not dropped for the next
    owner: with batches that would wait ten minutes, everything the worker consumed before
    SIGTERM is in the ledger when it has exited, before any other worker runs."""
    s, sent = scenario, Sent()
    create_topics(s)
    w = worker(s, EVENTSINK_BATCH_SIZE="5000", EVENTSINK_BATCH_MAX_WAIT_MS="600000")
    wait_until(lambda: get(f"{w.web}/healthz")[0] == 200, 60, what="/healthz")
    publish(s, sent, 2000, duplicates=0.1, invalid=0.05, seed=9)
    wait_until(
        lambda: total(samples(w), "eventsink_events_consumed_total", topic=s.topic) == sent.sent,
        60,
        what="every record consumed",
    )
    assert ledger_totals(s.dsn, s.group, s.topic)["events"] == 0, "batches were written before SIGTERM"
    assert w.stop(timeout=45) == 0
    led = ledger(s.dsn, s.group, s.topic)
    assert {p: led.get(p, {}).get("last_offset", -1) for p in sent.last_offsets} == sent.last_offsets
    done = drained(w)
    assert (done["consumed"], done["stale"]) == (sent.sent, 0)
    assert done["applied"] + done["duplicates_cache"] + done["duplicates_db"] + done["dead_letters"] == sent.sent
    assert_exactly_once(s, sent)


def test_a_rebalance_held_by_a_frozen_member_is_reported_until_the_group_forms(scenario: Scenario) -> None:
    """A member that stops answering holds every rebalance of its group (until its session ends)
    and nothing is applied meanwhile, yet no commit fails and no partition is assigned to stall:
    the member still running must say so (/healthz "degraded" with why, a warning in its log, the
    `eventsink_rebalancing_seconds` gauge), and stop saying so once the group has formed."""
    s = scenario
    create_topics(s)
    # The group waits for a silent member up to its session timeout (Tansu drops it once another
    # member's request finds it past it): 20 s, well past the 8 s after which the rebalance is long.
    frozen = worker(s, "frozen", EVENTSINK_SESSION_TIMEOUT_MS="20000")
    held = None
    try:
        wait_until(lambda: frozen.logged("worker ready"), 90, what="the first worker ready")
        held = worker(s, "held", EVENTSINK_REBALANCE_DEGRADED_S="8")
        wait_until(lambda: shared_by(s.topic, frozen, held), 90, what="the partitions split")
        wait_until(lambda: held.logged("worker ready"), 60, what="the second worker ready")
        assert health(held)["status"] == "ok" and health(held)["rebalancing"] is None
        os.kill(frozen.pid, signal.SIGSTOP)
        joining = worker(s, "joining")  # a rebalance, which waits for the frozen member
        report = wait_until(lambda: health(held).get("rebalancing"), 90, what="/healthz to report the rebalance")
        assert health(held)["status"] == "degraded"
        assert "waiting for the group to form" in report and "over 8 s" in report
        said = wait_until(
            lambda: [e for e in held.logs() if e.get("event") == "the group has been rebalancing for long"],
            30,
            what="the warning in the log",
        )
        assert said[0]["level"] == "warning" and "frozen" in said[0]["fix"]
        assert samples(held)[("eventsink_rebalancing_seconds", ())] >= 8
        os.kill(frozen.pid, signal.SIGCONT)
        wait_until(lambda: health(held).get("rebalancing") is None, 90, what="/healthz to clear")
        assert health(held)["status"] == "ok"
        assert held.logged("the group formed again") >= 1
        wait_until(lambda: joining.logged("worker ready"), 60, what="the joining worker ready")
        assert joining.stop() == 0
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        for w in (held, frozen):
            if w is not None and w.alive():
                w.stop()
