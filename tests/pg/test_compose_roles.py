"""docker-compose's database steps, as compose runs them, on the real PostgreSQL: db-roles
(deploy/sql/roles.sql and the roles' logins, as the superuser), `migrate` as the role compose gives
it, db-grants; then the workers' role writes, and can neither delete, nor migrate, nor say how far
retention went. The statements come from docker-compose.yml itself (psql's --file and --command,
in order), so the file and this test cannot drift apart."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from sinks.dsn import database_of, with_database, with_user
from sinks.migrate import migrate
from streams.dev import embedded
from tests.conftest import cluster_wide

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def statements(service: str) -> list[str]:
    """What the service's psql command runs, in order: each --file's text, each --command."""
    svc = compose()["services"][service]
    mounts = {target: ROOT / source for source, target, *_ in (v.split(":") for v in svc["volumes"])}
    done = []
    for arg in svc["command"]:
        if arg.startswith("--file="):
            done.append(mounts[arg.removeprefix("--file=")].read_text())
        elif arg.startswith("--command="):
            done.append(arg.removeprefix("--command="))
    assert done, f"{service} runs nothing"
    return done


def role_of(service: str) -> str:
    return conninfo_to_dict(compose()["services"][service]["environment"]["DATABASE_URL"])["user"]


def run_as_superuser(dsn: str, service: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, cluster_wide(conn):
        for sql in statements(service):
            conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture
def empty_database(pg_admin_dsn: str) -> Iterator[str]:
    admin = with_database(pg_admin_dsn, database_of(pg_admin_dsn))
    name = f"eventsink_compose_{uuid.uuid4().hex[:10]}"
    dsn = embedded.ensure_database(admin, name)
    try:
        yield dsn
    finally:
        embedded.drop_database(admin, name)


def privilege(conn: psycopg.Connection, role: str, table: str, what: str) -> bool:
    row = conn.execute("SELECT has_table_privilege(%s, %s, %s)", (role, f"eventsink.{table}", what)).fetchone()
    return bool(row and row[0])


def test_compose_creates_the_roles_migrates_as_the_migrator_and_workers_write_as_the_writer(
    empty_database: str,
) -> None:
    dsn = empty_database
    run_as_superuser(dsn, "db-roles")
    migrator, writer = role_of("migrate"), role_of("worker")
    assert migrate(with_user(dsn, migrator)), "the migrator creates the schema's tables after db-roles alone"
    run_as_superuser(dsn, "db-grants")

    with psycopg.connect(dsn) as conn:
        owners = {r[0] for r in conn.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'eventsink'")}
        assert owners == {migrator}
        # What db-grants adds once the tables exist: retention's own rights, the writer's taken away.
        assert privilege(conn, "eventsink_retention", "metrics_raw", "DELETE")
        assert not privilege(conn, writer, "retention_horizons", "INSERT")
        assert not privilege(conn, writer, "schema_migrations", "SELECT")
        for table in ("metrics_raw", "chat_messages", "analysis_events", "offsets_ledger"):
            assert privilege(conn, writer, table, "INSERT") and privilege(conn, writer, table, "UPDATE"), table
            assert not privilege(conn, writer, table, "DELETE"), table

    with psycopg.connect(with_user(dsn, writer), autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM eventsink.offsets_ledger")
        for refused in ("DELETE FROM eventsink.metrics_raw", "CREATE TABLE eventsink.x (i int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(refused)  # type: ignore[arg-type]
