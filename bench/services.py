"""The broker and the PostgreSQL server of a benchmark run, and one fresh database per contender."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from sinks.migrate import migrate
from streams.dev import embedded


@dataclass(frozen=True)
class Services:
    bootstrap: str
    admin_dsn: str  # a database of the server from which others are created and dropped
    description: str  # for the report
    # The broker's process when the run started it (Tansu), so that its CPU can be told apart from
    # PostgreSQL's; None for a broker of KAFKA_BOOTSTRAP_SERVERS.
    broker_pid: int | None = None


@contextlib.contextmanager
def services(workdir: Path) -> Iterator[Services]:
    """KAFKA_BOOTSTRAP_SERVERS or a Tansu of our own; DATABASE_URL, else :5432, else embedded."""
    with contextlib.ExitStack() as stack:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        broker = f"Kafka at {bootstrap} (KAFKA_BOOTSTRAP_SERVERS)"
        broker_pid = None
        if not bootstrap:
            tansu = embedded.EmbeddedKafka(log_path=workdir / "tansu.log").start()
            stack.callback(tansu.stop)
            bootstrap = tansu.bootstrap
            broker_pid = tansu.process.pid if tansu.process else None
            broker = f"Tansu (in memory) started by the run on {bootstrap}"
        admin_dsn = os.environ.get("DATABASE_URL")
        database = "PostgreSQL of DATABASE_URL"
        if not admin_dsn:
            admin_dsn = embedded.local_postgres()
            database = "PostgreSQL on 127.0.0.1:5432"
        if not admin_dsn:
            pg = embedded.EmbeddedPostgres(workdir / "pgdata").start()
            stack.callback(pg.stop)
            admin_dsn = pg.admin_dsn
            database = "embedded PostgreSQL started by the run"
        yield Services(bootstrap, admin_dsn, f"{broker}; {database}", broker_pid)


@contextlib.contextmanager
def fresh_database(admin_dsn: str, name: str, migrations: Path) -> Iterator[str]:
    """A new database with the migrations of `migrations` applied, dropped afterwards; yields its DSN.

    A checkpoint first, so that no contender pays for writing out another's dirty buffers.
    """
    embedded.drop_database(admin_dsn, name)
    dsn = embedded.ensure_database(admin_dsn, name)
    try:
        migrate(dsn, folder=migrations)
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        yield dsn
    finally:
        embedded.drop_database(admin_dsn, name)
