"""The world changes under a running worker: the database goes back in time, a topic is deleted
and created again, a transactional producer leaves markers in the log, one partition's writes
keep failing. Real worker processes, the real broker, the real PostgreSQL; nothing is lost
silently: every event ends stored once, or its partition waits loudly for an operator."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson
import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.faults.traffic import oracle
from tests.helpers import Scenario, WorkerProcess, count_by_tenant, ledger, wait_applied, wait_until
from tests.web import get, samples, total
from tests.workload import Sent, create_topics, metric_json, publish

OVERRIDE = "--lose-records-the-broker-still-has"

pytestmark = pytest.mark.e2e


def stored(s: Scenario, sent: Sent) -> int:
    return sum(count_by_tenant(s.dsn, sent.tenants).values())


def found_by(w: WorkerProcess) -> list[str]:
    """What found each ledger gone back, in the order the worker logged them."""
    return [
        e["found_by"]
        for e in w.logs()
        if e.get("event") == "ledger behind this worker's commits: was the database restored?"
    ]


def restore_behind(s: Scenario, sent: Sent, dump: Path, seed: int) -> int:
    """Publish and apply 2000 events, back the database up, publish and apply 1000 more (keys
    the worker's dedupe cache now holds), restore the backup: rows and ledger go back together.
    Returns the events stored at the backup."""
    publish(s, sent, 2000, duplicates=0.1, seed=seed)
    wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    assert s.cli("backup", str(dump), dsn=s.dsn).returncode == 0
    at_backup = stored(s, sent)
    publish(s, sent, 1000, duplicates=0.1, seed=seed + 1)
    wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    restored = s.cli("restore", str(dump), "--yes", dsn=s.dsn)
    assert restored.returncode == 0, restored.stderr
    return at_backup


def test_a_database_restored_to_an_earlier_point_under_a_running_worker_gets_every_event_back(
    scenario: Scenario, tmp_path: Path
) -> None:
    """Rows and ledger go back together (a restore, a point-in-time recovery, a failover to a replica
    that missed commits) while the worker runs and its dedupe cache still holds the keys it
    committed since. The next batch meets the gap (the periodic ledger check is set far away so
    that this path is the one taken). Every event must end stored exactly once."""
    s, sent = scenario, Sent()
    create_topics(s)
    w = WorkerProcess(s.env(EVENTSINK_LOG_CHECK_S="3600"), s.data_dir / "w.log").start()
    try:
        restore_behind(s, sent, tmp_path / "before.dump", seed=101)
        assert stored(s, sent) < sent.unique  # the last 1000 are gone from the database
        publish(s, sent, 500, duplicates=0.1, seed=103)
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets, timeout=120)
        wait_until(lambda: stored(s, sent) == sent.unique, 60, what="every event stored again")
    finally:
        assert w.stop() == 0
    assert set(found_by(w)) == {"a batch"}  # once per partition that had rows taken away
    oracle(s)
    assert count_by_tenant(s.dsn, sent.tenants) == dict(sent.unique_per_tenant)


def test_a_database_restored_under_an_idle_worker_is_refilled_without_new_traffic(
    scenario: Scenario, tmp_path: Path
) -> None:
    """The same restore, but nothing more is published: no batch will meet the gap. The periodic
    ledger check (`EVENTSINK_LOG_CHECK_S`) finds the ledger behind what the worker committed,
    and the worker reads the lost range again from the broker."""
    s, sent = scenario, Sent()
    create_topics(s)
    w = WorkerProcess(s.env(EVENTSINK_LOG_CHECK_S="1"), s.data_dir / "w.log").start()
    try:
        before_rows = restore_behind(s, sent, tmp_path / "before.dump", seed=111)
        # The worker may refill before this line runs, so the restore is proved by the log below.
        wait_until(lambda: stored(s, sent) == sent.unique, 60, what="every event stored again")
    finally:
        assert w.stop() == 0
    assert set(found_by(w)) == {"the periodic ledger check"}  # the restore took rows away
    assert before_rows < sent.unique
    oracle(s)
    assert count_by_tenant(s.dsn, sent.tenants) == dict(sent.unique_per_tenant)


def test_a_database_restored_to_before_its_first_commit_is_refilled_without_new_traffic(
    scenario: Scenario, tmp_path: Path
) -> None:
    """As above, but to a backup taken before the worker committed anything: the restore takes the
    ledger's rows away rather than moving them back (as a failover to a standby that never had a
    partition's first commit). The periodic check reads a missing row as a ledger at the start,
    and the worker reads every partition again, with nothing more published."""
    s, sent = scenario, Sent()
    create_topics(s)
    w = WorkerProcess(s.env(EVENTSINK_LOG_CHECK_S="1"), s.data_dir / "w.log").start()
    try:
        wait_until(lambda: w.logged("worker ready"), 60, what="the worker ready")
        dump = tmp_path / "empty.dump"
        assert s.cli("backup", str(dump), dsn=s.dsn).returncode == 0
        publish(s, sent, 1000, duplicates=0.1, seed=121)
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
        restored = s.cli("restore", str(dump), "--yes", dsn=s.dsn)
        assert restored.returncode == 0, restored.stderr
        wait_until(lambda: stored(s, sent) == sent.unique, 60, what="every event stored again")
    finally:
        assert w.stop() == 0
    assert set(found_by(w)) == {"the periodic ledger check"}  # the restore took the rows away
    oracle(s)
    assert count_by_tenant(s.dsn, sent.tenants) == dict(sent.unique_per_tenant)


async def _recreate(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        for _ in range(100):
            if topic not in await admin.list_topics():
                break
            await asyncio.sleep(0.1)
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


def test_a_recreated_topic_stops_its_partitions_until_an_operator_resets_the_ledger(scenario: Scenario) -> None:
    """The topic is deleted and created again under a running worker: its offsets restart at 0,
    below the ledger. The partitions the ledger counted stop (nothing of the new log is skipped,
    nothing applied past a ledger of the old one) until `eventsink ledger reset`; then every new
    event is stored."""
    s, old = scenario, Sent()
    create_topics(s)
    w = WorkerProcess(s.env(EVENTSINK_LOG_CHECK_S="1"), s.data_dir / "w.log").start()
    try:
        publish(s, old, 400, duplicates=0.0, seed=201)
        wait_applied(s.dsn, s.group, s.topic, old.last_offsets)
        counted = sorted(old.last_offsets)  # the partitions the old tenants' keys hash to
        # Not recreated yet: a reset would apply the log again from offset 0.
        unchanged = s.cli("ledger", "reset", "--topic", s.topic, "--dry-run")
        assert unchanged.returncode == 2 and "the broker serves the log the ledger counted" in unchanged.stderr
        asyncio.run(_recreate(s.bootstrap, s.topic, 4))
        new = Sent(tenants=old.tenants)  # same tenants, same partitions, new events
        publish(s, new, 300, duplicates=0.0, seed=202)

        def stopped() -> bool:
            m = samples(w)
            return all(
                total(m, "eventsink_partition_blocked", topic=s.topic, partition=str(p), reason="log_changed") == 1
                for p in counted
            )

        wait_until(stopped, 60, what="the recreated topic's counted partitions stopped")
        status, body = get(f"{w.web}/healthz")
        health = orjson.loads(body)
        assert status == 200 and health["status"] == "degraded"
        assert sorted(health["stopped_partitions"]) == [f"{s.topic}[{p}]" for p in counted]
        assert stored(s, old) == old.unique, "a record of the new log was applied past a ledger of the old one"
        said = [e for e in w.logs() if e.get("event") == "partition stopped" and e.get("reason") == "log_changed"]
        assert said and all(f"eventsink ledger reset --topic {s.topic} --partition" in e["fix"] for e in said)

        # lag sees them stopped, not caught up: the new log waits whole, and a lag check fails.
        lagged = s.cli("lag", "--json")
        assert lagged.returncode == 1, lagged.stderr  # a stopped partition fails the check, --max-lag or not
        lags = {p["partition"]: p for p in orjson.loads(lagged.stdout)["partitions"]}
        assert sorted(p for p, v in lags.items() if v["stopped"]) == counted
        assert all(lags[p]["stopped"].startswith("log_changed: topic id is") for p in counted)
        assert all(lags[p]["ledger_lag"] == lags[p]["end_offset"] for p in counted)
        check = s.cli("lag", "--max-lag", "1000000")
        assert check.returncode == 1 and "is stopped, log_changed" in check.stderr, check.stderr

        dry = s.cli("ledger", "reset", "--topic", s.topic, "--dry-run")
        assert dry.returncode == 0 and "dry run: nothing changed" in dry.stderr, dry.stderr
        assert stored(s, old) == old.unique
        done = s.cli("ledger", "reset", "--topic", s.topic, EVENTSINK_OPERATOR="bob")
        assert done.returncode == 0 and f"reset {len(counted)} partition(s)" in done.stderr, done.stderr
        assert dry.stderr.strip().splitlines()[:-1] == done.stderr.strip().splitlines()[:-1]  # the same plan
        history = [orjson.loads(line) for line in s.cli("ledger", "history", "--json").stdout.splitlines()]
        resets = sorted(
            (c["partition"], c["before_offset"], c["after_offset"]) for c in history if c["operator"] == "bob"
        )
        assert resets == [(p, old.last_offsets[p], -1) for p in counted]
        wait_until(lambda: stored(s, old) == old.unique + new.unique, 90, what="the new log applied after the reset")
        wait_applied(s.dsn, s.group, s.topic, new.last_offsets)
        assert total(samples(w), "eventsink_partition_blocked", topic=s.topic) == 0
    finally:
        assert w.stop() == 0
    expected = old.unique_per_tenant + new.unique_per_tenant
    assert count_by_tenant(s.dsn, old.tenants) == dict(expected)


def test_after_a_recreation_skip_is_refused_lag_fails_and_a_second_reset_has_nothing_to_do(scenario: Scenario) -> None:
    """With the topic recreated (no worker running): `lag` fails without --max-lag, `ledger skip`
    on a ledger that counts the old log is refused (it would record losses the new log never
    had), the reset starts the new log, and a second reset says it is already done."""
    s, old = scenario, Sent()
    create_topics(s)
    w = WorkerProcess(s.env(), s.data_dir / "w.log").start()
    try:
        publish(s, old, 200, duplicates=0.0, seed=211)
        wait_applied(s.dsn, s.group, s.topic, old.last_offsets)
    finally:
        assert w.stop() == 0
    counted = sorted(old.last_offsets)
    asyncio.run(_recreate(s.bootstrap, s.topic, 4))
    new = Sent(tenants=old.tenants)
    publish(s, new, 100, duplicates=0.0, seed=212)
    before = ledger(s.dsn, s.group, s.topic)

    lagged = s.cli("lag", "--topic", s.topic)
    assert lagged.returncode == 1 and "(stopped)" in lagged.stdout and "is stopped, log_changed" in lagged.stderr

    p = counted[0]
    skip = s.cli("ledger", "skip", "--topic", s.topic, "--partition", str(p), "--to", "1", OVERRIDE)
    lines = skip.stderr.strip().splitlines()
    assert skip.returncode == 2 and len(lines) == 1, skip
    assert f"the ledger of {s.topic}[{p}] counts another log (topic id " in lines[0], lines
    assert "use `eventsink ledger reset`" in lines[0]
    assert ledger(s.dsn, s.group, s.topic) == before  # nothing recorded as lost

    done = s.cli("ledger", "reset", "--topic", s.topic)
    assert done.returncode == 0 and f"reset {len(counted)} partition(s)" in done.stderr, done.stderr
    again = s.cli("ledger", "reset", "--topic", s.topic)
    assert again.returncode == 0, again.stderr
    assert f"{s.topic}: its partitions were already reset (the ledger is empty): nothing to do" in again.stderr
    assert "the broker serves the log" not in again.stderr
    one = s.cli("ledger", "reset", "--topic", s.topic, "--partition", str(p))
    assert one.returncode == 0 and f"partition {p} was already reset" in one.stderr, one.stderr
    history = [orjson.loads(line) for line in s.cli("ledger", "history", "--json").stdout.splitlines()]
    assert sorted(c["partition"] for c in history if c["consumer_group"] == s.group) == counted  # one reset each


def _produce_transactions(bootstrap: str, topic: str, tenant: str, transactions: int, size: int) -> dict[int, int]:
    """Committed transactions of `size` records each, all to partition 0, by librdkafka; each
    leaves a commit marker in the log. Returns {partition: last offset}."""
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex[:8]}", "linger.ms": 5}
    )
    producer.init_transactions(30)
    last: dict[int, int] = {}

    def delivered(err: object, msg: object) -> None:
        assert err is None, err
        last[msg.partition()] = max(msg.offset(), last.get(msg.partition(), -1))  # type: ignore[attr-defined]

    for t in range(transactions):
        producer.begin_transaction()
        for i in range(size):
            producer.produce(
                topic, metric_json(tenant, f"tx{t}-{i}"), tenant.encode(), partition=0, on_delivery=delivered
            )
        producer.commit_transaction(30)
    producer.flush(30)
    return last


def test_transaction_markers_are_spanned_without_asking_the_broker(scenario: Scenario) -> None:
    """A transactional producer (librdkafka) commits 40 transactions of 25 records: 40 commit
    markers, 40 one-offset holes in the partition. The worker reads committed records only, and
    knows the holes are the log's own: no batch stops at them, no broker round trip checks them."""
    s = scenario
    create_topics(s)
    tenant = str(uuid.uuid4())
    w = WorkerProcess(s.env(), s.data_dir / "w.log").start()
    try:
        last = _produce_transactions(s.bootstrap, s.topic, tenant, 40, 25)
        wait_applied(s.dsn, s.group, s.topic, last)
        assert count_by_tenant(s.dsn, [tenant]) == {tenant: 1000}
        m = samples(w)
        assert total(m, "eventsink_offset_gaps_total", topic=s.topic) == 0
        assert total(m, "eventsink_log_gaps_total", topic=s.topic) >= 39
        assert ledger(s.dsn, s.group, s.topic)[0]["last_offset"] >= last[0]
    finally:
        assert w.stop() == 0


def test_one_partition_failing_pauses_only_itself_and_says_so(scenario: Scenario) -> None:
    """Every write of one partition fails with a transient error (a lock the database cannot grant):
    the other partitions keep applying, that one is paused in Kafka and reported stalled, and
    once the database accepts it again it catches up with nothing lost."""
    # Eight tenants: the chance that they all land on one of four partitions is 1 in 16,384.
    s, sent = scenario, Sent(tenants=[str(uuid.uuid4()) for _ in range(8)])
    create_topics(s)
    publish(s, sent, 4000, duplicates=0.0, seed=301)
    assert len(sent.last_offsets) >= 2, "the tenants must spread over at least two partitions"
    bad = min(sent.last_offsets)
    trigger = f"fail_{s.name}"
    with psycopg.connect(s.dsn, autocommit=True) as conn:
        conn.execute(
            f"""
            CREATE FUNCTION eventsink.{trigger}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.kafka_topic = '{s.topic}' AND NEW.kafka_partition = {bad} THEN
                    RAISE EXCEPTION 'partition {bad} is locked for this test' USING ERRCODE = '55P03';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER {trigger} BEFORE INSERT ON eventsink.metrics_raw
                FOR EACH ROW EXECUTE FUNCTION eventsink.{trigger}();
            """
        )
    w = WorkerProcess(s.env(EVENTSINK_BATCH_SIZE="100"), s.data_dir / "w.log").start()
    try:
        others = {p: o for p, o in sent.last_offsets.items() if p != bad}
        wait_applied(s.dsn, s.group, s.topic, others)
        assert ledger(s.dsn, s.group, s.topic).get(bad, {}).get("last_offset", -1) < sent.last_offsets[bad]

        def stalled(p: int) -> float:
            return total(samples(w), "eventsink_partition_stalled_seconds", topic=s.topic, partition=str(p))

        wait_until(lambda: stalled(bad) >= 3, 60, what=f"partition {bad} reported stalled")
        # The others are not held back by it: nothing of theirs waits.
        wait_until(lambda: all(stalled(p) == 0 for p in others), 30, what="the other partitions not stalled")
        assert any(e.get("event") == "batch not committed; retrying" and e.get("partition") == bad for e in w.logs())
        with psycopg.connect(s.dsn, autocommit=True) as conn:
            conn.execute(f"DROP TRIGGER {trigger} ON eventsink.metrics_raw; DROP FUNCTION eventsink.{trigger}()")
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets, timeout=120)
        wait_until(lambda: stalled(bad) == 0, 30, what=f"partition {bad} no longer stalled")
    finally:
        assert w.stop() == 0
    assert count_by_tenant(s.dsn, sent.tenants) == dict(sent.unique_per_tenant)
