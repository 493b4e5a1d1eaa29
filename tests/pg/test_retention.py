"""Retention removes old data only, in batches, next to live writers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from schemas.analysis import AnalysisEvent
from schemas.chat import ChatEvent
from schemas.metric import MetricEvent
from sinks.core.batch import Batch, Record
from sinks.core.sink import Sink
from sinks.pool import open_pool
from sinks.retention import METRICS, archive_analyses, expire_chat, expire_metrics, horizon_of
from sinks.writers.analysis import AnalysisWriter
from sinks.writers.chat import ChatWriter
from sinks.writers.metric import MetricWriter
from tests.helpers import eventsink, writers_pool

NOW = datetime.now(UTC)


async def _no_dead(dead: list) -> None:
    assert not dead, dead


class Writer:
    def __init__(self, pool: object, writer: object) -> None:
        self.sink = Sink(pool, f"g-{uuid.uuid4().hex[:8]}", writer, _no_dead)  # type: ignore[arg-type]
        self.topic, self.next = f"t-{uuid.uuid4().hex[:8]}", 0

    async def write(self, *events: object):  # type: ignore[no-untyped-def]
        records = [Record(self.next + i, e, None, b"{}") for i, e in enumerate(events)]
        self.next += len(events)
        return await self.sink.write(Batch(self.topic, 0, records[0].offset, records[-1].offset, records))


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[object]:
    async with writers_pool(database_url, ChatWriter(), AnalysisWriter(), MetricWriter(), max_size=6) as p:
        yield p


def chat(tenant: uuid.UUID, conv: uuid.UUID, at: datetime) -> ChatEvent:
    return ChatEvent.model_construct(
        tenant_id=tenant,
        dedupe_id=uuid.uuid4().hex,
        conversation_id=conv,
        role="user",
        content="hi",
        occurred_at=at,
        user_id=None,
        model=None,
        prompt_tokens=1,
        completion_tokens=None,
    )


def analysis(tenant: uuid.UUID, aid: uuid.UUID, status: str, at: datetime) -> AnalysisEvent:
    return AnalysisEvent.model_construct(
        tenant_id=tenant,
        dedupe_id=uuid.uuid4().hex,
        analysis_id=aid,
        status=status,
        occurred_at=at,
        progress=None,
        result=None,
        error=None,
        media_url=None,
        kind=None,
    )


def metric(tenant: uuid.UUID, at: datetime, dedupe_id: str | None = None) -> MetricEvent:
    return MetricEvent.model_construct(
        tenant_id=tenant, dedupe_id=dedupe_id or uuid.uuid4().hex, name="m", value=1.0, occurred_at=at, tags={}
    )


def metric_times(dsn: str, tenant: uuid.UUID) -> dict[str, datetime]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT dedupe_id, occurred_at FROM eventsink.metrics_raw WHERE tenant_id = %s", (tenant,))
        return dict(rows.fetchall())


def existing(dsn: str, table: str, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute(f"SELECT id FROM eventsink.{table} WHERE id = ANY(%s)", (ids,))}


async def test_idle_chat_sessions_go_with_their_messages_and_live_ones_stay(pool: object, database_url: str) -> None:
    w, tenant = Writer(pool, ChatWriter()), uuid.uuid4()
    idle = [uuid.uuid4() for _ in range(25)]
    live = [uuid.uuid4() for _ in range(5)]
    for conv in idle:
        await w.write(chat(tenant, conv, NOW - timedelta(days=40)), chat(tenant, conv, NOW - timedelta(days=35)))
    for conv in live:
        await w.write(chat(tenant, conv, NOW - timedelta(days=40)), chat(tenant, conv, NOW - timedelta(hours=1)))
    preview = expire_chat(database_url, 30, dry_run=True)
    assert preview.sessions >= 25 and existing(database_url, "chat_sessions", idle) == set(idle)
    done = expire_chat(database_url, 30, batch=7)
    assert done.sessions >= 25 and done.messages >= 50
    assert existing(database_url, "chat_sessions", idle) == set()
    assert existing(database_url, "chat_sessions", live) == set(live)
    with psycopg.connect(database_url) as conn:
        orphans = conn.execute(
            "SELECT count(*) FROM eventsink.chat_messages WHERE session_id = ANY(%s)", (idle,)
        ).fetchone()
    assert orphans == (0,)


async def test_retention_next_to_a_live_writer(pool: object, database_url: str) -> None:
    """Sessions a worker keeps writing to are never lost; their counters stay exact."""
    w, tenant = Writer(pool, ChatWriter()), uuid.uuid4()
    convs = [uuid.uuid4() for _ in range(20)]
    for conv in convs:
        await w.write(chat(tenant, conv, NOW - timedelta(days=60)))

    async def keep_writing() -> int:
        n = 0
        for _ in range(30):
            await w.write(*(chat(tenant, c, NOW) for c in convs[:10]))
            n += 1
        return n

    rounds, _ = await asyncio.gather(keep_writing(), asyncio.to_thread(expire_chat, database_url, 30, batch=2))
    with psycopg.connect(database_url) as conn:
        counts = dict(
            conn.execute(
                "SELECT s.id, s.message_count FROM eventsink.chat_sessions s WHERE s.id = ANY(%s)", (convs[:10],)
            )
        )
        real = dict(
            conn.execute(
                "SELECT session_id, count(*) FROM eventsink.chat_messages WHERE session_id = ANY(%s) GROUP BY 1",
                (convs[:10],),
            )
        )
    assert set(counts) == set(convs[:10]), "a session being written to was lost"
    assert counts == real  # the counter equals the rows, whichever side won each race
    assert all(rounds <= n <= rounds + 1 for n in counts.values())


async def test_old_soft_deleted_analyses_are_archived_and_never_revived(pool: object, database_url: str) -> None:
    w, tenant = Writer(pool, AnalysisWriter()), uuid.uuid4()
    old, recent, live = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await w.write(
        analysis(tenant, old, "pending", NOW - timedelta(days=20)),
        analysis(tenant, old, "deleted", NOW - timedelta(days=10)),
    )
    await w.write(
        analysis(tenant, recent, "pending", NOW - timedelta(days=3)),
        analysis(tenant, recent, "deleted", NOW - timedelta(days=1)),
    )
    await w.write(analysis(tenant, live, "pending", NOW - timedelta(days=30)))
    assert archive_analyses(database_url, 7, dry_run=True).analyses >= 1
    assert archive_analyses(database_url, 7).analyses >= 1
    assert existing(database_url, "analysis_requests", [old, recent, live]) == {recent, live}
    assert existing(database_url, "analysis_requests_archive", [old]) == {old}
    late = await w.write(analysis(tenant, old, "processing", NOW))
    assert late.superseded == 1 and existing(database_url, "analysis_requests", [old]) == set()


async def test_metric_rows_older_than_the_cut_go_in_batches_and_the_rest_stay(pool: object, database_url: str) -> None:
    w, tenants = Writer(pool, MetricWriter()), [uuid.uuid4(), uuid.uuid4()]
    start = datetime.now(UTC)
    edge = start - timedelta(days=30)  # the cut of a 30-day run starting now, or a little later
    old = [metric(t, edge - timedelta(seconds=60 + i)) for t in tenants for i in range(25)]
    young = [metric(t, edge + timedelta(seconds=60 + i)) for t in tenants for i in range(10)]
    await w.write(*old, *young)
    preview = expire_metrics(database_url, 30, dry_run=True)
    assert preview.metrics >= 50
    assert sum(len(metric_times(database_url, t)) for t in tenants) == 70, "a dry run deletes nothing"
    batches: list[int] = []
    done = expire_metrics(database_url, 30, batch=7, progress=lambda table, n: batches.append(n))
    assert done.metrics_cut is not None and edge <= done.metrics_cut <= datetime.now(UTC) - timedelta(days=30)
    assert done.metrics == sum(batches) >= 50 and max(batches) <= 7 and len(batches) >= 8  # 25 per tenant, by 7
    left = {d for t in tenants for d in metric_times(database_url, t)}
    assert left == {e.dedupe_id for e in young}, "exactly the rows older than the cut are gone"
    with psycopg.connect(database_url) as conn:
        assert horizon_of(conn, METRICS) >= done.metrics_cut  # type: ignore[operator]


async def test_a_duplicate_of_a_pruned_event_is_stored_again(pool: object, database_url: str) -> None:
    w, tenant = Writer(pool, MetricWriter()), uuid.uuid4()
    event = metric(tenant, NOW - timedelta(days=90), "late-duplicate")
    assert (await w.write(event)).applied
    expire_metrics(database_url, 60)
    assert metric_times(database_url, tenant) == {}
    again = await w.write(event)  # the dedupe is the table: what retention removed is new again
    assert len(again.applied) == 1 and metric_times(database_url, tenant).keys() == {"late-duplicate"}


async def test_metric_retention_next_to_a_live_writer(pool: object, database_url: str) -> None:
    """A writer inserting young and old rows while retention runs loses no young row."""
    w, tenant = Writer(pool, MetricWriter()), uuid.uuid4()
    await w.write(*(metric(tenant, NOW - timedelta(days=50, seconds=i)) for i in range(300)))
    written: list[MetricEvent] = []

    async def keep_writing() -> None:
        for r in range(40):
            batch = [metric(tenant, NOW - timedelta(days=50 if i % 2 else 0, seconds=i)) for i in range(10)]
            written.extend(batch)
            result = await w.write(*batch)
            assert len(result.applied) == 10, r

    _, done = await asyncio.gather(keep_writing(), asyncio.to_thread(expire_metrics, database_url, 30, batch=5))
    left = metric_times(database_url, tenant)
    young = {e.dedupe_id for e in written if e.occurred_at > NOW - timedelta(days=1)}
    assert young <= left.keys() and len(young) == 200, "a young row was lost"
    assert all(at < done.metrics_cut for d, at in left.items() if d not in young)  # type: ignore[operator]
    assert done.metrics >= 300  # every old row there before the run, and old rows written during it


@pytest.mark.slow
def test_the_command_reports_counts(own_database: str) -> None:
    # A database of its own: other tests leave chat sessions and analyses at the edges of time.
    env = {**os.environ, "DATABASE_URL": own_database, "EVENTSINK_LOG_FORMAT": "json"}
    run = [sys.executable, "-m", "streams.cli", "retention", "--chat-days", "3650", "--analysis-deleted-days", "3650"]
    dry = subprocess.run([*run, "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert "would remove 0 chat sessions" in dry.stderr and "would remove 0 analyses" in dry.stderr
    real = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert real.returncode == 0 and "removed 0 chat sessions" in real.stderr
    chat_only = subprocess.run(run[:6], env=env, capture_output=True, text=True, timeout=60)
    assert chat_only.returncode == 0 and "analyses" not in chat_only.stderr
    nothing = subprocess.run(run[:4], env=env, capture_output=True, text=True, timeout=60)
    assert nothing.returncode == 2 and "give --metrics-days" in nothing.stderr
    metrics = [*run[:4], "--metrics-days", "36500", "--batch", "10"]
    dry = subprocess.run([*metrics, "--dry-run"], env=env, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and "would remove 0 metric rows older than 36500 days" in dry.stderr, dry.stderr
    real = subprocess.run(metrics, env=env, capture_output=True, text=True, timeout=60)
    assert real.returncode == 0 and "removed 0 metric rows" in real.stderr, real.stderr
    assert "chat" not in real.stderr


def _retention_in_flight(dsn: str, statement: str) -> psycopg.Connection:
    """A retention transaction that has picked and changed its rows but not committed yet."""
    conn = psycopg.connect(dsn)
    rows = conn.execute(statement, {"age": timedelta(days=7), "batch": 100}).fetchall()
    assert rows, "retention found nothing to do"
    return conn


async def _until_waiting_on_a_lock(dsn: str, application_name: str) -> None:
    """Until a backend of the pool waits on a lock: the interleaving is then the one we want."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        with psycopg.connect(dsn) as conn:
            (waiting,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                (application_name,),
            ).fetchone()  # type: ignore[misc]
        if waiting:
            return
        assert asyncio.get_running_loop().time() < deadline, "the writer never waited on retention's lock"
        await asyncio.sleep(0.05)


async def test_an_analysis_retention_is_archiving_is_never_recreated_by_a_late_event(database_url: str) -> None:
    """Retention has moved an analysis to the archive but not committed; a late event for it (of
    another tenant, even) arrives meanwhile. The writer waits for the row, then finds it archived."""
    from sinks.retention import ARCHIVE_DELETED_ANALYSES

    name = f"race-{uuid.uuid4().hex[:8]}"
    p = open_pool(database_url, stage_ddl=AnalysisWriter.stage_ddl, name=name)
    await p.open(wait=True)
    try:
        w, tenant, aid = Writer(p, AnalysisWriter()), uuid.uuid4(), uuid.uuid4()
        await w.write(
            analysis(tenant, aid, "pending", NOW - timedelta(days=20)),
            analysis(tenant, aid, "deleted", NOW - timedelta(days=10)),
        )
        retention = _retention_in_flight(database_url, ARCHIVE_DELETED_ANALYSES)
        late = asyncio.create_task(w.write(analysis(uuid.uuid4(), aid, "processing", NOW)))
        await _until_waiting_on_a_lock(database_url, name)
        retention.commit()
        retention.close()
        result = await late
        assert result.superseded == 1 and not result.dead_letters
        assert existing(database_url, "analysis_requests", [aid]) == set()
        assert existing(database_url, "analysis_requests_archive", [aid]) == {aid}
        # And the next retention run has nothing left to trip on.
        assert archive_analyses(database_url, 7).analyses >= 0
    finally:
        await p.close()


async def test_a_session_retention_is_deleting_never_comes_back_half_filled(database_url: str) -> None:
    """Retention deletes an idle session (its messages cascade) but has not committed; a new message
    of that conversation arrives meanwhile. The writer waits, then starts the conversation afresh:
    its session holds exactly the messages that exist, and its counters say so."""
    from sinks.retention import DELETE_IDLE_SESSIONS

    name = f"race-{uuid.uuid4().hex[:8]}"
    p = open_pool(database_url, stage_ddl=ChatWriter.stage_ddl, name=name)
    await p.open(wait=True)
    try:
        w, tenant, conv = Writer(p, ChatWriter()), uuid.uuid4(), uuid.uuid4()
        await w.write(*(chat(tenant, conv, NOW - timedelta(days=40 - i)) for i in range(3)))
        retention = _retention_in_flight(database_url, DELETE_IDLE_SESSIONS)
        late = asyncio.create_task(w.write(chat(tenant, conv, NOW)))
        await _until_waiting_on_a_lock(database_url, name)
        retention.commit()
        retention.close()
        assert len((await late).applied) == 1
        with psycopg.connect(database_url) as conn:
            row = conn.execute(
                "SELECT message_count, prompt_tokens, created_at FROM eventsink.chat_sessions WHERE id = %s", (conv,)
            ).fetchone()
            (messages,) = conn.execute(
                "SELECT count(*) FROM eventsink.chat_messages WHERE session_id = %s", (conv,)
            ).fetchone()  # type: ignore[misc]
        assert row is not None and messages == 1
        assert row[:2] == (1, 1) and abs((row[2] - NOW).total_seconds()) < 1
    finally:
        await p.close()


@pytest.mark.parametrize("days", ["0", "0.5", "1e-300", "-3", "36501", "1e9", "inf", "nan", "ten"])
def test_odd_day_counts_are_usage_errors(database_url: str, days: str) -> None:
    """A day count below one day (1e-300 would be every row), above 100 years or not finite is
    refused before anything is read: exit 2, one line saying what is valid."""
    for option in ("--metrics-days", "--chat-days", "--analysis-deleted-days"):
        done = eventsink("retention", option, days, "--dry-run", env={"DATABASE_URL": database_url})
        assert done.returncode == 2, (option, days, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert option in done.stderr and "36500" in done.stderr and "Traceback" not in done.stderr, done.stderr


def _metric_rows(dsn: str, tenant: uuid.UUID, ages_days: list[int]) -> None:
    with psycopg.connect(dsn) as conn:
        for i, age in enumerate(ages_days):
            conn.execute(
                "INSERT INTO eventsink.metrics_raw (tenant_id, dedupe_id, name, value, occurred_at, kafka_topic, "
                "kafka_partition, kafka_offset) "
                "VALUES (%s, %s, 'cpu', 1, now() - make_interval(days => %s), 't', 0, %s)",
                (tenant, f"d{i}", age, i),
            )


def test_a_run_that_would_remove_rows_asks_first(own_database: str) -> None:
    """Without --yes and with no terminal (stdin closed) a run that would delete rows refuses in
    one line and deletes nothing; with --yes it deletes exactly the old rows."""
    tenant = uuid.uuid4()
    _metric_rows(own_database, tenant, [400, 400, 400, 400, 1, 0])
    env = {"DATABASE_URL": own_database}
    refused = eventsink("retention", "--metrics-days", "30", env=env)
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "4 metric rows" in refused.stderr and "--yes" in refused.stderr, refused.stderr
    assert len(metric_times(own_database, tenant)) == 6, "a refused run deleted rows"
    done = eventsink("retention", "--metrics-days", "30", "--yes", env=env)
    assert done.returncode == 0 and "removed 4 metric rows" in done.stderr, done.stderr
    assert len(metric_times(own_database, tenant)) == 2
