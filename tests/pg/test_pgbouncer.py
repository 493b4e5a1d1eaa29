"""eventsink through a real PgBouncer 1.18 in transaction pooling (`tests/pgbouncer.py`): the
settings a batch needs are in force inside its transaction although PgBouncer drops every
startup option, and the tools that need a session of their own refuse a pooler."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sinks.core.batch import Batch, Outcome, Record
from sinks.core.sink import Sink
from sinks.errors import MigrationError, TransientSinkError
from sinks.local_settings import SEARCH_PATH
from sinks.migrate import migrate, rollback, status
from sinks.retention import expire_metrics
from sinks.writers.metric import MetricWriter
from tests.helpers import eventsink, writers_pool
from tests.pg.test_sink_edges import Letters, batch, metric, record
from tests.pgbouncer import PgBouncer

WRITER = MetricWriter()
ADVISORY_HERE = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
SETTINGS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "search_path")


class SettingsProbe:
    """A writer that applies nothing and notes the settings its batch's transaction runs under."""

    kind, stage_ddl, ordered = "probe", (), False

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    async def upsert(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, records: Sequence[Record[Any]]
    ) -> Outcome:
        cur = await conn.execute(f"SELECT {', '.join('current_setting(%s)' for _ in SETTINGS)}", SETTINGS)
        self.seen.append(dict(zip(SETTINGS, await cur.fetchone() or (), strict=True)))
        return Outcome(applied={r.offset for r in records})

    async def prepare(self, conn: psycopg.AsyncConnection, records: Sequence[Record[Any]]) -> None:
        pass

    async def upsert_one(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, record: Record[Any]
    ) -> Outcome:
        return await self.upsert(conn, topic, partition, [record])


async def test_a_batch_transaction_runs_under_its_settings_through_pgbouncer(
    pgbouncer: PgBouncer, database_url: str
) -> None:
    # PgBouncer accepts `options` (ignore_startup_parameters) and drops it: a session setting in
    # the DSN never reaches the server.
    through = pgbouncer.dsn(database_url)
    with psycopg.connect(f"{through} options='-c lock_timeout=4321'") as conn:
        assert conn.execute("SELECT current_setting('lock_timeout')").fetchone() != ("4321ms",)
    probe = SettingsProbe()
    options = {"statement_timeout_ms": 45_000, "lock_timeout_ms": 1_234, "idle_in_transaction_timeout_ms": 41_000}
    async with writers_pool(through, WRITER, max_size=6, **options) as pool:
        sink = Sink(pool, f"g-{uuid.uuid4().hex[:8]}", probe)  # type: ignore[arg-type]
        topic, tenant = f"m-{uuid.uuid4().hex[:8]}", uuid.uuid4()
        # More batches at once (one per partition) than PgBouncer has server connections: they
        # run on each of them.
        await asyncio.gather(
            *(sink.write(Batch(topic, p, 0, 0, [record(0, metric(tenant, f"e{p}"))])) for p in range(12))
        )
        # Outside a batch transaction, a pooled connection keeps the server's defaults: nothing
        # was left on a server connection for the next client.
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT current_setting('lock_timeout')")
            assert await cur.fetchone() == ("0",)
    assert len(probe.seen) == 12
    for seen in probe.seen:
        assert seen == {
            "statement_timeout": "45s",
            "lock_timeout": "1234ms",
            "idle_in_transaction_session_timeout": "41s",
            "search_path": SEARCH_PATH,
        }
    assert pgbouncer.transactions(database_of(database_url)) >= 12


def database_of(dsn: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])


async def test_a_write_gives_up_on_a_held_lock_at_the_lock_timeout_through_pgbouncer(
    pgbouncer: PgBouncer, database_url: str
) -> None:
    """Another session holds the partition's ledger row: the batch's lock wait ends with a lock
    timeout (transient: the pipeline retries it) instead of waiting as long as the holder does."""
    group, topic, tenant = f"g-{uuid.uuid4().hex[:8]}", f"m-{uuid.uuid4().hex[:8]}", uuid.uuid4()
    async with writers_pool(pgbouncer.dsn(database_url), WRITER, lock_timeout_ms=300) as pool:
        sink = Sink(pool, group, WRITER, Letters())
        await sink.write(batch(topic, record(0, metric(tenant, "e0"))))
        with psycopg.connect(database_url) as holder:
            holder.execute(
                "SELECT 1 FROM eventsink.offsets_ledger WHERE consumer_group = %s AND topic = %s FOR UPDATE",
                (group, topic),
            )
            # Without the lock timeout in force this would wait for the holder (the test's own
            # timeout would end it, and fail it).
            with pytest.raises(TransientSinkError, match="lock timeout"):
                await asyncio.wait_for(sink.write(batch(topic, record(1, metric(tenant, "e1")))), 60)
            holder.rollback()
        result = await sink.write(batch(topic, record(1, metric(tenant, "e1"))))
        assert [r.offset for r in result.applied] == [1], "the retry applies the batch once the lock is free"


def test_migrate_refuses_a_pooler_and_changes_nothing(pgbouncer: PgBouncer, own_database: str) -> None:
    through = pgbouncer.dsn(own_database)
    before = [(m.version, m.applied_at) for m in status(own_database)]
    for command in (lambda: migrate(through), lambda: rollback(through, 0)):
        with pytest.raises(MigrationError, match="PgBouncer"):
            command()
    assert [(m.version, m.applied_at) for m in status(own_database)] == before
    with psycopg.connect(own_database) as conn:
        held = conn.execute(ADVISORY_HERE).fetchone()
    assert held == (0,), "no advisory lock left behind on a pooled server connection"


def test_migrate_backup_and_restore_refuse_pgbouncer_with_one_clear_line(
    pgbouncer: PgBouncer, own_database: str, tmp_path: Path
) -> None:
    through = {"DATABASE_URL": pgbouncer.dsn(own_database)}
    dump = tmp_path / "eventsink.dump"
    for args in (("migrate",), ("migrate", "--down-to", "0"), ("backup", str(dump))):
        done = eventsink(*args, env=through)
        assert done.returncode == 1, (args, done.stderr)
        assert "needs a direct connection" in done.stderr and "PgBouncer" in done.stderr, done.stderr
    assert not list(tmp_path.iterdir()), "a refused backup leaves no file behind"
    assert eventsink("backup", str(dump), env={"DATABASE_URL": own_database}).returncode == 0
    done = eventsink("restore", str(dump), "--yes", env=through)
    assert done.returncode == 1 and "restore needs a direct connection" in done.stderr, done.stderr
    # Read-only `migrate --status` has no session state: it works through the pooler.
    done = eventsink("migrate", "--status", env=through)
    assert done.returncode == 0 and "pending" not in done.stdout, done.stdout


async def test_many_batches_on_few_server_connections_apply_every_record_once(
    pgbouncer: PgBouncer, database_url: str
) -> None:
    """A statement run often enough is prepared by the driver on its connection: through a
    pooler, the next transaction meets another server connection, where that name is missing
    or taken by another client's. Every record must still apply once, and none be dead-lettered."""
    group, topic, tenant = f"g-{uuid.uuid4().hex[:8]}", f"m-{uuid.uuid4().hex[:8]}", uuid.uuid4()
    letters = Letters()
    # Round robin: a client's consecutive transactions run on different server connections.
    with PgBouncer(database_url, round_robin=True) as moving:
        async with writers_pool(moving.filled(database_url), WRITER, max_size=6) as pool:
            sink = Sink(pool, group, WRITER, letters)

            async def partition(p: int) -> int:
                applied = 0
                for b in range(15):
                    records = [record(b * 10 + i, metric(tenant, f"p{p}-{b}-{i}")) for i in range(10)]
                    result = await sink.write(Batch(topic, p, b * 10, b * 10 + 9, records))
                    applied += len(result.applied)
                return applied

            applied = await asyncio.gather(*(partition(p) for p in range(6)))
    assert not letters, letters[:3]
    assert applied == [150] * 6
    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT count(*) FROM eventsink.metrics_raw WHERE tenant_id = %s", (tenant,)).fetchone()
    assert stored == (900,)


def test_retention_runs_its_batches_through_pgbouncer(pgbouncer: PgBouncer, database_url: str) -> None:
    assert pgbouncer  # installed (or skipped) like the others
    """Retention repeats one statement per batch on one connection: through a pooler each may run
    on another server connection (no statement prepared by name may be counted on)."""
    tenant = uuid.uuid4()
    old = datetime.now(UTC) - timedelta(days=40)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO eventsink.metrics_raw (tenant_id, dedupe_id, name, value, occurred_at, kafka_topic, "
            "kafka_partition, kafka_offset) SELECT %s, 'old-' || i, 'cpu', i, %s, 't', 0, i "
            "FROM generate_series(1, 30) AS i",
            (tenant, old),
        )
    batches: list[int] = []
    # Alone, a client keeps getting the server connection it last used: round robin moves it.
    with PgBouncer(database_url, round_robin=True) as moving:
        done = expire_metrics(moving.filled(database_url), 30, batch=3, progress=lambda table, n: batches.append(n))
    assert done.metrics >= 30 and len(batches) >= 10
    with psycopg.connect(database_url) as conn:
        left = conn.execute("SELECT count(*) FROM eventsink.metrics_raw WHERE tenant_id = %s", (tenant,)).fetchone()
    assert left == (0,)
