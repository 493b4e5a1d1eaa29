"""Plain `.sql` migrations, applied in order, recorded, and safe to run concurrently.

Each migration runs in its own transaction (PostgreSQL DDL is transactional), so one that
fails half-way leaves the schema as it was. A session-level advisory lock serialises
concurrent runs: the second waits, then finds nothing left to do.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from sinks.direct import POOLER_HINT, through_pooler
from sinks.errors import MigrationError

SCHEMA = "eventsink"
_LOCK_KEY = 0x6576_656E_7473  # "events": one lock for every eventsink migrator
_FILE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")

BOOTSTRAP = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""
APPLIED = f"SELECT version, name, checksum, applied_at FROM {SCHEMA}.schema_migrations ORDER BY version"
RECORD = f"INSERT INTO {SCHEMA}.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)"
FORGET = f"DELETE FROM {SCHEMA}.schema_migrations WHERE version = %s"
TABLES = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY c.relname
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: str
    down: str | None

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.up.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    applied_at: datetime | None
    reversible: bool


def available(folder: Path | None = None) -> list[Migration]:
    """The migrations shipped with eventsink (or those of `folder`), in version order."""
    source: Any = folder if folder is not None else resources.files("sinks") / "migrations"
    found = []
    for entry in source.iterdir():
        match = _FILE.match(entry.name)
        if not match:
            continue
        down_file = source / entry.name.replace(".sql", ".down.sql")
        down = down_file.read_text() if down_file.is_file() else None
        found.append(Migration(int(match["version"]), match["name"], entry.read_text(), down))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version: {versions}")
    return found


def _locked(conn: psycopg.Connection) -> dict[int, tuple[str, str, datetime]]:
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    with conn.transaction():
        conn.execute(BOOTSTRAP)
    return {row[0]: (row[1], row[2], row[3]) for row in conn.execute(APPLIED)}


def _direct(conn: psycopg.Connection) -> psycopg.Connection:
    """`conn`, unless it reaches a pooler: the session lock would stay on a server connection the
    pooler lends to others, and the unlock could run on another one (the next migrate would then
    wait for ever)."""
    if through_pooler(conn):
        conn.close()
        raise MigrationError(POOLER_HINT.format(what="migrate", why="a session-level lock serialises migrations"))
    return conn


def _unlock(conn: psycopg.Connection) -> None:
    if not conn.closed:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))


def migrate(dsn: str, target: int | None = None, folder: Path | None = None) -> list[Migration]:
    """Apply pending migrations up to `target` (all by default); return those applied."""
    done: list[Migration] = []
    with _direct(psycopg.connect(dsn, autocommit=True)) as conn:
        try:
            applied = _locked(conn)
            for migration in available(folder):
                if target is not None and migration.version > target:
                    break
                if migration.version in applied:
                    name, checksum, _ = applied[migration.version]
                    if checksum != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{name} was edited after it was "
                            "applied; add a new migration instead"
                        )
                    continue
                try:
                    with conn.transaction():
                        conn.execute(migration.up)  # type: ignore[arg-type]
                        conn.execute(RECORD, (migration.version, migration.name, migration.checksum))
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} failed and was rolled back: {exc}"
                    ) from exc
                done.append(migration)
        finally:
            _unlock(conn)
    return done


@dataclass(frozen=True)
class RollbackPlan:
    """What `rollback` to a version would do: the migrations it undoes (newest first) and the
    tables their down steps drop, with the rows each holds now."""

    migrations: list[Migration]
    dropped: dict[str, int]

    @property
    def rows(self) -> int:
        return sum(self.dropped.values())


def _to_undo(applied: dict[int, Any], target: int, folder: Path | None) -> list[Migration]:
    by_version = {m.version: m for m in available(folder)}
    undo = []
    for version in sorted(applied, reverse=True):
        if version <= target:
            break
        migration = by_version.get(version)
        if migration is None or migration.down is None:
            raise MigrationError(f"migration {version:04d} is irreversible")
        undo.append(migration)
    return undo


def _tables(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute(TABLES, (SCHEMA,))]


class _Trial(Exception):
    """Raised to roll back a trial run of the down steps."""


def plan_rollback(dsn: str, target: int, folder: Path | None = None) -> RollbackPlan:
    """What `rollback(dsn, target)` would undo and drop, changing nothing.

    The down steps run for real in one transaction that is then rolled back: the tables they
    drop are read from the catalog, not guessed from their SQL. Row counts are exact
    (`count(*)`), read before.
    """
    with _direct(psycopg.connect(dsn, autocommit=True)) as conn:
        try:
            undo = _to_undo(_locked(conn), target, folder)
            before = _tables(conn)
            counts = {t: _count(conn, t) for t in before if t != "schema_migrations"}
            gone: list[str] = []
            try:
                with conn.transaction():
                    # A table a worker is writing: say so rather than wait behind it for ever.
                    conn.execute("SET LOCAL lock_timeout = '10s'")
                    for migration in undo:
                        conn.execute(migration.down)  # type: ignore[arg-type]
                    gone = sorted(set(before) - set(_tables(conn)))
                    raise _Trial
            except _Trial:
                pass
            except psycopg.errors.LockNotAvailable as exc:
                raise MigrationError(f"the tables are in use (stop the workers first): {exc}") from exc
        finally:
            _unlock(conn)
    return RollbackPlan(undo, {t: counts[t] for t in gone if t in counts})


def _count(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(SCHEMA, table))).fetchone()
    return int(row[0]) if row else 0


def current(dsn: str) -> int:
    """The newest migration applied to `dsn` (0 if none, or no eventsink schema)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.schema_migrations",)).fetchone()
        if not (exists and exists[0]):
            return 0
        row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_migrations").fetchone()
    return int(row[0]) if row else 0


def rollback(dsn: str, target: int, folder: Path | None = None) -> list[Migration]:
    """Undo applied migrations above `target`, newest first (see `plan_rollback` for what it drops)."""
    undone: list[Migration] = []
    with _direct(psycopg.connect(dsn, autocommit=True)) as conn:
        try:
            for migration in _to_undo(_locked(conn), target, folder):
                with conn.transaction():
                    conn.execute(migration.down)  # type: ignore[arg-type]
                    conn.execute(FORGET, (migration.version,))
                undone.append(migration)
        finally:
            _unlock(conn)
    return undone


def status(dsn: str, folder: Path | None = None) -> list[MigrationStatus]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.schema_migrations",)).fetchone()
        applied = {}
        if exists and exists[0]:
            applied = {row[0]: row[3] for row in conn.execute(APPLIED)}
    return [MigrationStatus(m.version, m.name, applied.get(m.version), m.down is not None) for m in available(folder)]
