"""The analysts' tools (`verify`, `chat history`) read a standby when asked, and say which server
they read and its role. A real streaming standby of a primary of the test's own
(`tests/standby.py`), a real worker writing into the primary."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import psycopg
import pytest

from sinks.migrate import migrate
from tests.helpers import Scenario, WorkerProcess, eventsink, wait_applied, wait_until
from tests.standby import PrimaryAndStandby, server_bin
from tests.workload import Sent, create_topics, publish

pytestmark = pytest.mark.e2e
DATABASE = "eventsink"


@pytest.fixture(scope="module")
def replicated() -> Iterator[PrimaryAndStandby]:
    if server_bin() is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql to build a standby with")
    with PrimaryAndStandby() as servers:
        with psycopg.connect(servers.dsn("primary"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        migrate(servers.dsn("primary", DATABASE))
        yield servers


def conversation(dsn: str, messages: int) -> tuple[uuid.UUID, uuid.UUID, list[str]]:
    """A chat session with its messages, written as the writer would have (what the test sent)."""
    tenant, session = uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    contents = [f"message {i} of {session}" for i in range(messages)]
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO eventsink.chat_sessions (id, tenant_id, created_at, last_message_at, message_count) "
            "VALUES (%s, %s, %s, %s, %s)",
            (session, tenant, at, at + timedelta(seconds=messages), messages),
        )
        for i, content in enumerate(contents):
            conn.execute(
                "INSERT INTO eventsink.chat_messages (tenant_id, dedupe_id, session_id, role, content, occurred_at, "
                "kafka_topic, kafka_partition, kafka_offset) VALUES (%s, %s, %s, 'user', %s, %s, 'chat', 0, %s)",
                (tenant, f"m{i}", session, content, at + timedelta(seconds=i), i),
            )
    return tenant, session, contents


def replayed(standby_dsn: str, query: str, params: tuple[object, ...]) -> bool:
    try:
        with psycopg.connect(standby_dsn) as conn:
            row = conn.execute(query, params).fetchone()
            return bool(row and row[0])
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
        return False  # the standby has not replayed the database (or its tables) yet


def history(dsn_env: dict[str, str], session: uuid.UUID, tenant: uuid.UUID, *extra: str) -> tuple[list[str], str]:
    done = eventsink("chat", "history", str(session), "--tenant", str(tenant), "--json", *extra, env=dsn_env)
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line)["content"] for line in done.stdout.splitlines()], done.stderr


def test_chat_history_reads_a_standby_when_asked_and_says_so(replicated: PrimaryAndStandby) -> None:
    primary, standby = replicated.dsn("primary", DATABASE), replicated.dsn("standby", DATABASE)
    tenant, session, contents = conversation(primary, 3)
    wait_until(
        lambda: replayed(standby, "SELECT count(*) = 3 FROM eventsink.chat_messages WHERE session_id = %s", (session,)),
        60,
        what="the standby to replay the conversation",
    )
    port = {name: str(p) for name, p in replicated.ports.items()}
    # By default the tools read DATABASE_URL: here the primary, and they say so.
    got, said = history({"DATABASE_URL": primary}, session, tenant)
    assert got == contents and f"127.0.0.1:{port['primary']}/{DATABASE} (primary)" in said, said
    # EVENTSINK_READ_DATABASE_URL: the standby.
    got, said = history({"DATABASE_URL": primary, "EVENTSINK_READ_DATABASE_URL": standby}, session, tenant)
    assert got == contents and f"127.0.0.1:{port['standby']}/{DATABASE} (standby)" in said, said
    # --read-dsn with both servers and target_session_attrs=prefer-standby: libpq picks the standby.
    read = replicated.prefer_standby(DATABASE)
    got, said = history({"DATABASE_URL": primary}, session, tenant, "--read-dsn", read)
    assert got == contents and f"127.0.0.1:{port['standby']}/{DATABASE} (standby)" in said, said


def test_verify_reads_a_standby_and_reports_it(
    replicated: PrimaryAndStandby, kafka_bootstrap: str, tmp_path: Path
) -> None:
    primary, standby = replicated.dsn("primary", DATABASE), replicated.dsn("standby", DATABASE)
    s, sent = Scenario(kafka_bootstrap, primary, tmp_path), Sent()
    create_topics(s)
    publish(s, sent, 400, duplicates=0.1, seed=11)
    w = WorkerProcess(s.env(), s.data_dir / "w.log").start()
    try:
        wait_applied(primary, s.group, s.topic, sent.last_offsets)
    finally:
        assert w.stop() == 0
    last = max(sent.last_offsets.values())
    wait_until(
        lambda: replayed(
            standby,
            "SELECT coalesce(sum(events), 0) = %s FROM eventsink.offsets_ledger WHERE consumer_group = %s",
            (sent.sent, s.group),
        ),
        60,
        what=f"the standby to replay the ledger (last offset {last})",
    )
    done = s.cli("verify", s.topic, "--json", EVENTSINK_READ_DATABASE_URL=standby)
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["ok"] and report["total"]["applied"] == sent.unique, report["total"]
    assert report["read_from"] == {
        "server": f"127.0.0.1:{replicated.ports['standby']}",
        "database": DATABASE,
        "role": "standby",
    }
    done = s.cli("verify", s.topic, "--read-dsn", primary)
    assert done.returncode == 0, done.stderr
    assert f"read PostgreSQL at 127.0.0.1:{replicated.ports['primary']}/{DATABASE} (primary)" in done.stderr, (
        done.stderr
    )


def test_an_unparseable_read_dsn_is_a_usage_error_that_quotes_nothing(database_url: str) -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    for args in (("chat", "history", str(uuid.uuid4()), "--tenant", str(uuid.uuid4())), ("verify", "metrics")):
        done = eventsink(*args, "--read-dsn", f"password={secret} host", env={"DATABASE_URL": database_url})
        assert done.returncode == 2, (args, done.stderr)
        assert "--read-dsn" in done.stderr and "not a PostgreSQL connection string" in done.stderr, done.stderr
        assert secret not in done.stdout + done.stderr
