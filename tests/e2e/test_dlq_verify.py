"""`eventsink verify` as an oracle, and the DLQ tools an operator uses after an incident."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from streams.dev.loadgen.metric import LoadReport
from tests.helpers import (
    Scenario,
    WorkerProcess,
    commit_group_offsets,
    committed_offsets,
    expected,
    read_topic,
    wait_applied,
    wait_until,
)
from tests.workload import Sent, apply_all_kinds, create_topics, publish, send_raw

pytestmark = pytest.mark.e2e


def verified(s: Scenario, topic: str, *extra: str) -> tuple[int, dict]:
    done = s.cli("verify", topic, "--json", *extra)
    return done.returncode, orjson.loads(done.stdout)


@pytest.mark.slow
def test_verify_reconciles_every_kind_and_finds_what_is_wrong(scenario: Scenario) -> None:
    s = scenario
    everything = apply_all_kinds(s, duplicates=0.2, seed=51)
    sent = everything.metrics
    code, report = verified(s, s.topic)
    assert code == 0 and report["ok"], (report["total"], report["problems"][:5])
    total = report["total"]
    assert (total["seen"], total["unique"], total["applied"], total["in_dlq"]) == (
        sent.sent,
        sent.unique,
        sent.unique,
        sent.invalid,
    )
    assert (total["missing"], total["duplicated"], total["pending"]) == (0, 0, 0)
    for topic in (s.chat_topic, s.analysis_topic):
        code, report = verified(s, topic)
        assert code == 0 and report["ok"], report["problems"]
    tenant = sent.tenants[0]
    code, one = verified(s, s.topic, "--tenant", tenant)
    assert [t["tenant"] for t in one["tenants"]] == [tenant] and one["total"]["applied"] == sent.unique_per_tenant[
        tenant
    ]

    # Break one thing of each kind: verify must notice and fail.
    conversation = next(iter(expected(s, "chat").sessions()))
    analysis = next(a for a, v in expected(s, "analysis").analyses().items() if v.state.status != "pending")
    with psycopg.connect(s.dsn) as conn:
        conn.execute(
            "DELETE FROM eventsink.metrics_raw WHERE id = (SELECT min(id) FROM eventsink.metrics_raw "
            "WHERE kafka_topic = %s)",
            (s.topic,),
        )
        conn.execute(
            "UPDATE eventsink.chat_sessions SET message_count = message_count + 1 WHERE id = %s",
            (conversation,),
        )
        conn.execute(
            "UPDATE eventsink.analysis_requests SET status = 'pending', deleted_at = NULL WHERE id = %s",
            (analysis,),
        )
    code, report = verified(s, s.topic)
    assert code == 1 and report["total"]["missing"] == 1 and "is missing" in report["problems"][0]
    code, report = verified(s, s.chat_topic)
    assert code == 1 and report["total"]["duplicated"] == 1 and "counters" in report["problems"][0]
    code, report = verified(s, s.analysis_topic)
    assert code == 1 and report["total"]["duplicated"] == 1 and "in-order result" in report["problems"][0]
    human = s.cli("verify", s.topic)
    assert human.returncode == 1 and "inconsistent" in human.stderr and "missing" in human.stdout


def test_records_not_yet_applied_are_pending_not_missing(scenario: Scenario) -> None:
    """A lagging group: what its ledger has not reached yet is pending, not missing, and verify
    passes. A group that has applied nothing in this database verified nothing: never consistent."""
    s, sent = scenario, Sent()
    create_topics(s)
    first = publish(s, sent, 300, seed=54)
    # The group exists (the broker knows it, as once a worker joined); its ledger counts nothing yet.
    asyncio.run(commit_group_offsets(s.bootstrap, s.group, s.topic, {p: 0 for p in range(4)}))
    done = s.cli("verify", s.topic, "--json")
    assert done.returncode == 1, done.stderr
    report = orjson.loads(done.stdout)
    assert not report["ok"] and report["ledger_rows"] == 0
    assert report["total"]["pending"] == report["total"]["unique"] == sent.unique
    last = done.stderr.strip().splitlines()[-1]
    assert (
        f"has applied nothing of {s.topic} for group {s.group} (no ledger rows) and the group's Kafka committed "
        "offsets are at 0: nothing was verified" in last
    ), done.stderr
    assert report["unverified"] in last

    w = WorkerProcess(s.env(), s.data_dir / "w.log").start()
    try:
        wait_applied(s.dsn, s.group, s.topic, first.last_offsets)
    finally:
        assert w.stop() == 0
    later = publish(s, sent, 200, seed=55)  # after the worker stopped: past the ledger
    code, report = verified(s, s.topic)
    assert code == 0 and report["ok"], (report["total"], report["unverified"], report["problems"][:5])
    total = report["total"]
    assert (total["applied"], total["pending"], total["missing"]) == (_unique(first), _unique(later), 0)
    assert report["unverified"] is None and report["behind_kafka"] == []


def _unique(report: LoadReport) -> int:
    return sum(report.unique_per_tenant.values())


def _database(dsn: str) -> tuple[str, str]:
    """(host:port/database as libpq connects to it, the database name)."""
    with psycopg.connect(dsn) as conn:
        return f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}", conn.info.dbname


def test_verify_pointed_at_another_database_fails_naming_it(scenario: Scenario, own_database: str) -> None:
    """The group applied the whole topic in the scenario's database (its Kafka committed offsets at
    the end of every partition). verify against another, freshly migrated database read nothing
    applied: exit status 1, one line naming the database and the group's committed offsets, never
    "consistent", no password. Against the right database it is consistent."""
    s, sent = scenario, Sent()
    create_topics(s)
    publish(s, sent, 400, duplicates=0.1, seed=57)
    ends = {p: o + 1 for p, o in sent.last_offsets.items()}  # the producer's offsets: the oracle
    w = WorkerProcess(s.env(), s.data_dir / "w.log").start()
    try:
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
        wait_until(
            lambda: asyncio.run(committed_offsets(s.bootstrap, s.group, s.topic, ends)) == ends,
            60,
            what=f"the group's Kafka committed offsets at {ends}",
        )
    finally:
        assert w.stop() == 0

    secret = f"vf-{uuid.uuid4().hex}"  # trust auth: never sent, but it is in DATABASE_URL
    other = make_conninfo(own_database, password=secret)
    where, name = _database(other)
    wrong = s.cli("verify", s.topic, dsn=other)
    lines = wrong.stderr.strip().splitlines()
    assert wrong.returncode == 1, wrong.stderr
    assert f"read PostgreSQL at {where} (primary)" in wrong.stderr, wrong.stderr
    assert lines[-1] == (
        f"error: database {where} has applied nothing of {s.topic} for group {s.group} (no ledger rows), yet the "
        f"group's Kafka committed offsets are at {sum(ends.values())} (summed over {len(ends)} partitions): "
        f"nothing was verified; is DATABASE_URL (database {name}) the one its workers write to?"
    ), wrong.stderr
    assert not {"consistent", "inconsistent"} & {line.strip() for line in lines}, wrong.stderr
    as_json = s.cli("verify", s.topic, "--json", dsn=other)
    assert as_json.returncode == 1, as_json.stderr
    report = orjson.loads(as_json.stdout)
    assert not report["ok"] and report["ledger_rows"] == 0 and report["unverified"] in as_json.stderr
    assert (report["total"]["applied"], report["total"]["pending"]) == (0, sent.unique)
    assert report["read_from"] == {"server": where.rsplit("/", 1)[0], "database": name, "role": "primary"}
    assert report["kafka_committed"] == [{"partition": p, "offset": o} for p, o in sorted(ends.items())]
    named = s.cli("verify", s.topic, "--read-dsn", other)
    assert named.returncode == 1 and f"is --read-dsn (database {name}) the one" in named.stderr, named.stderr

    # A ledger there, but behind the offsets the group committed in Kafka (its workers wrote
    # elsewhere, or the database lost commits): refused too, partition by partition.
    with psycopg.connect(other) as conn:
        for p in ends:
            conn.execute(
                "INSERT INTO eventsink.offsets_ledger (consumer_group, topic, partition) VALUES (%s, %s, %s)",
                (s.group, s.topic, p),
            )
    behind = s.cli("verify", s.topic, dsn=other)
    assert behind.returncode == 1, behind.stderr
    shown = ", ".join(f"[{p}] 0 < {o}" for p, o in sorted(ends.items()))
    assert behind.stderr.strip().splitlines()[-1] == (
        f"error: the ledger of group {s.group} in database {where} is behind the offsets the group committed in "
        f"Kafka for {s.topic} (next offset here < committed: {shown}): workers commit to Kafka only what the ledger "
        "holds, so this is not the database they write to, or it lost commits (an older backup restored, a "
        f"failover); is DATABASE_URL (database {name}) the one its workers write to?"
    ), behind.stderr
    for done in (wrong, as_json, named, behind):
        assert secret not in done.stdout + done.stderr

    right, right_name = _database(s.worker_dsn or s.dsn)
    human = s.cli("verify", s.topic)
    assert human.returncode == 0, human.stderr
    assert f"read PostgreSQL at {right} (primary)" in human.stderr and human.stderr.strip().endswith("consistent")
    code, report = verified(s, s.topic)
    assert code == 0 and report["ok"] and report["unverified"] is None, report["unverified"]
    assert report["read_from"]["database"] == right_name and report["ledger_rows"] == len(ends)
    total = report["total"]
    assert (total["seen"], total["applied"], total["pending"], total["missing"]) == (sent.sent, sent.unique, 0, 0)


def test_dlq_list_and_replay_after_a_limit_is_raised(scenario: Scenario) -> None:
    """Messages refused as too large are replayed once the limit is raised: applied once, even
    when replayed twice; a record still invalid goes back to the DLQ and nowhere else."""
    s, sent = scenario, Sent()
    create_topics(s)
    tenant, conv = sent.tenants[0], str(uuid.uuid4())

    def message(i: int, size: int) -> bytes:
        return orjson.dumps(
            {
                "tenant_id": tenant,
                "dedupe_id": f"m{i}",
                "conversation_id": conv,
                "role": "user",
                "content": "x" * size,
                "occurred_at": f"2024-05-01T12:00:0{i}Z",
            }
        )

    send_raw(
        s,
        sent,
        [(tenant.encode(), message(i, 500 if i % 2 else 50)) for i in range(6)]
        + [(tenant.encode(), b"definitely not json")],
        topic=s.chat_topic,
    )
    strict = WorkerProcess(s.env(EVENTSINK_CHAT_MAX_CONTENT_BYTES="100"), s.data_dir / "strict.log").start()
    try:
        wait_applied(s.dsn, s.group, s.chat_topic, sent.last_offsets)
    finally:
        strict.stop()
    listed = [orjson.loads(x) for x in s.cli("dlq", "list", f"{s.chat_topic}.dlq", "--json").stdout.splitlines()]
    assert sorted(r["reason"] for r in listed) == ["invalid_json", "too_large", "too_large", "too_large"]
    too_large = s.cli("dlq", "list", f"{s.chat_topic}.dlq", "--reason", "too_large", "--json")
    assert len(too_large.stdout.splitlines()) == 3
    assert s.cli("dlq", "list", f"{s.chat_topic}.dlq", "--tenant", str(uuid.uuid4())).stdout.count("@") == 0

    # Replayed twice before a worker runs, so that the second replay meets the same four letters
    # (a running worker would dead-letter the invalid one again in between, a fifth letter).
    for _ in range(2):  # replaying twice changes nothing the second time
        done = s.cli("dlq", "replay", f"{s.chat_topic}.dlq")
        assert done.returncode == 0 and "replayed 4 record(s)" in done.stderr
    relaxed = WorkerProcess(s.env(), s.data_dir / "relaxed.log").start()
    try:
        wait_until(lambda: _messages(s.dsn, conv) == 6, 60, what="replayed messages applied")
        wait_until(
            lambda: len(asyncio_read(s, f"{s.chat_topic}.dlq")) == 6, 60, what="the invalid record dead-lettered again"
        )
    finally:
        relaxed.stop()
    with psycopg.connect(s.dsn) as conn:
        assert conn.execute("SELECT message_count FROM eventsink.chat_sessions WHERE id = %s", (conv,)).fetchone() == (
            6,
        )
    reasons = [r.info.reason for r in asyncio_read(s, f"{s.chat_topic}.dlq")]
    assert sorted(reasons) == ["invalid_json"] * 3 + ["too_large"] * 3
    code, report = verified(s, s.chat_topic)
    assert code == 0, report["problems"]


def _messages(dsn: str, conv: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM eventsink.chat_messages WHERE session_id = %s", (conv,)).fetchone()[0]  # type: ignore[index]


def asyncio_read(s: Scenario, topic: str) -> list:
    import asyncio

    return asyncio.run(read_topic(s.bootstrap, topic))


def test_verify_shows_its_reading_on_a_terminal_and_nothing_of_it_in_a_pipe(scenario: Scenario) -> None:
    """Reading a large topic took verify 15 s without a word: on a terminal it now counts the
    records read, per topic; piped, stderr carries no terminal control codes."""
    import os
    import pty
    import subprocess
    import sys

    s, sent = scenario, Sent()
    create_topics(s)
    publish(s, sent, 3000, seed=77)
    # A group known to the broker (no worker: verify then exits 1, having applied nothing; its
    # reading is what is looked at here).
    asyncio.run(commit_group_offsets(s.bootstrap, s.group, s.topic, {p: 0 for p in range(4)}))
    env = {**s.env(), "EVENTSINK_LOG_FORMAT": "json", "TERM": "xterm", "COLUMNS": "160"}
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "verify", s.topic],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal (EIO)
            break
        if not chunk:
            break
        shown += chunk
    proc.communicate(timeout=120)
    os.close(leader)
    text = shown.decode("utf-8", "replace")
    assert f"reading {s.topic}" in text and "3000/?" in text, text[-2000:]
    piped = s.cli("verify", s.topic)
    assert f"reading {s.topic}" not in piped.stderr and "\x1b" not in piped.stderr + piped.stdout
