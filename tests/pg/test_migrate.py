"""Migrations: ordered, recorded, idempotent, concurrent-safe, atomic, reversible."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sinks import migrate as m
from sinks.dsn import database_of, with_database
from sinks.errors import MigrationError
from streams.dev import embedded
from tests.helpers import eventsink


@pytest.fixture
def empty_db(pg_admin_dsn: str) -> Iterator[str]:
    admin = with_database(pg_admin_dsn, database_of(pg_admin_dsn))
    name = f"eventsink_mig_{uuid.uuid4().hex[:8]}"
    dsn = embedded.ensure_database(admin, name)
    yield dsn
    embedded.drop_database(admin, name)


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'eventsink'")}


def test_migrate_applies_in_order_once(empty_db: str) -> None:
    first = m.migrate(empty_db)
    assert [x.version for x in first] == sorted(x.version for x in m.available())
    assert m.migrate(empty_db) == []
    assert {"offsets_ledger", "metrics_raw", "schema_migrations"} <= tables(empty_db)
    assert all(st.applied_at is not None for st in m.status(empty_db))


def test_two_processes_migrating_at_once_both_succeed(empty_db: str) -> None:
    code = f"from sinks.migrate import migrate; migrate({empty_db!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE) for _ in range(3)]
    results = [(p.wait(60), p.stderr.read().decode() if p.stderr else "") for p in procs]
    assert all(rc == 0 for rc, _ in results), results
    with psycopg.connect(empty_db) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM eventsink.schema_migrations")]
    assert sorted(versions) == sorted(x.version for x in m.available())


def test_an_edited_migration_is_refused(empty_db: str) -> None:
    m.migrate(empty_db)
    with psycopg.connect(empty_db) as conn:
        conn.execute("UPDATE eventsink.schema_migrations SET checksum = 'x' WHERE version = 1")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        m.migrate(empty_db)


def test_a_failing_migration_leaves_the_schema_as_it_was(empty_db: str, tmp_path: Path) -> None:
    (tmp_path / "0001_good.sql").write_text("CREATE TABLE eventsink.good (id int);")
    (tmp_path / "0002_bad.sql").write_text(
        "CREATE TABLE eventsink.half (id int);\nALTER TABLE eventsink.nope ADD COLUMN x int;"
    )
    with pytest.raises(MigrationError, match="0002_bad failed and was rolled back"):
        m.migrate(empty_db, folder=tmp_path)
    assert "good" in tables(empty_db)
    assert "half" not in tables(empty_db)
    assert [(s.version, s.applied_at is not None) for s in m.status(empty_db, tmp_path)] == [(1, True), (2, False)]


def test_down_steps_undo_and_redo(empty_db: str) -> None:
    m.migrate(empty_db)
    undone = m.rollback(empty_db, 0)
    assert [x.version for x in undone] == sorted((x.version for x in m.available()), reverse=True)
    assert tables(empty_db) == {"schema_migrations"}
    m.migrate(empty_db)
    assert {"offsets_ledger", "metrics_raw"} <= tables(empty_db)


def test_an_irreversible_migration_stops_a_rollback(empty_db: str, tmp_path: Path) -> None:
    (tmp_path / "0001_keep.sql").write_text("CREATE TABLE eventsink.keep (id int);")
    m.migrate(empty_db, folder=tmp_path)
    with pytest.raises(MigrationError, match="irreversible"):
        m.rollback(empty_db, 0, folder=tmp_path)
    assert "keep" in tables(empty_db)


def test_the_ledger_changes_migration_runs_twice_and_goes_back(empty_db: str) -> None:
    m.migrate(empty_db)
    ledger_changes = next(x for x in m.available() if x.name == "ledger_changes")
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(ledger_changes.up)  # type: ignore[arg-type]  # again: nothing to do, no error
        assert ledger_changes.down is not None
        conn.execute(ledger_changes.down)  # type: ignore[arg-type]
        assert conn.execute("SELECT to_regclass('eventsink.ledger_changes')").fetchone() == (None,)
        conn.execute(ledger_changes.up)  # type: ignore[arg-type]
        assert conn.execute("SELECT to_regclass('eventsink.ledger_changes')").fetchone() != (None,)


def test_the_writer_role_appends_to_the_record_of_ledger_changes_and_never_rewrites_it(writer_url: str) -> None:
    with psycopg.connect(writer_url) as conn:
        conn.execute(
            "INSERT INTO eventsink.ledger_changes (operator, command, action, consumer_group, topic, partition, "
            "before_offset, after_offset, reason) VALUES ('t', 'eventsink ledger skip', 'skip', %s, 't', 0, -1, 0, '')",
            (f"g-{uuid.uuid4().hex[:8]}",),
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE eventsink.ledger_changes SET operator = 'someone else'")


def _fill(dsn: str, metrics: int, ledger: int) -> None:
    """`metrics` metric rows and `ledger` ledger rows, for a rollback to find."""
    tenant = uuid.uuid4()
    with psycopg.connect(dsn) as conn:
        for i in range(metrics):
            conn.execute(
                "INSERT INTO eventsink.metrics_raw (tenant_id, dedupe_id, name, value, occurred_at, kafka_topic, "
                "kafka_partition, kafka_offset) VALUES (%s, %s, 'cpu', 1, now(), 't', 0, %s)",
                (tenant, f"d{i}", i),
            )
        for p in range(ledger):
            conn.execute(
                "INSERT INTO eventsink.offsets_ledger (consumer_group, topic, partition, last_offset) "
                "VALUES ('g', 't', %s, 9)",
                (p,),
            )


def _applied(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM eventsink.schema_migrations ORDER BY 1")]


def test_migrate_down_over_rows_shows_asks_and_records(own_database: str) -> None:
    """`migrate --down-to 0` on tables that hold rows: a dry run lists what would go, a run
    without --yes (stdin is not a terminal) refuses in one line, --yes drops and says what."""
    _fill(own_database, metrics=3, ledger=2)
    env = {"DATABASE_URL": own_database}
    every = _applied(own_database)
    assert every == [x.version for x in m.available()]

    dry = eventsink("migrate", "--down-to", "0", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    for x in m.available():
        assert f"{x.version:04d}_{x.name}" in dry.stderr, dry.stderr
    assert "metrics_raw (3 rows)" in dry.stderr and "offsets_ledger (2 rows)" in dry.stderr, dry.stderr
    assert "schema_migrations" not in dry.stderr
    assert _applied(own_database) == every and {"metrics_raw", "offsets_ledger"} <= tables(own_database)

    refused = eventsink("migrate", "--down-to", "0", env=env)
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "metrics_raw (3 rows)" in refused.stderr and "offsets_ledger (2 rows)" in refused.stderr
    assert "--yes" in refused.stderr
    assert _applied(own_database) == every
    with psycopg.connect(own_database) as conn:
        assert conn.execute("SELECT count(*) FROM eventsink.metrics_raw").fetchone() == (3,)

    done = eventsink("migrate", "--down-to", "0", "--yes", env=env)
    assert done.returncode == 0, done.stderr
    assert f"rolled back {len(every)} migration(s)" in done.stderr and "metrics_raw (3 rows)" in done.stderr
    assert tables(own_database) == {"schema_migrations"}
    assert _applied(own_database) == []


def test_migrate_down_of_empty_tables_needs_no_yes(empty_db: str) -> None:
    m.migrate(empty_db)
    done = eventsink("migrate", "--down-to", "0", env={"DATABASE_URL": empty_db})
    assert done.returncode == 0, done.stderr
    assert tables(empty_db) == {"schema_migrations"}


def test_migrate_to_an_older_version_says_where_the_database_is(empty_db: str) -> None:
    m.migrate(empty_db)
    latest = max(x.version for x in m.available())
    done = eventsink("migrate", "--to", str(latest - 1), env={"DATABASE_URL": empty_db})
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"at migration {latest}, past {latest - 1}" in done.stderr, done.stderr
    assert f"--down-to {latest - 1}" in done.stderr
    assert _applied(empty_db)[-1] == latest
