"""`eventsink backup` / `eventsink restore` against a real PostgreSQL, with a database a real worker filled."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import orjson
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sinks.dsn import database_of, with_database
from sinks.migrate import migrate
from streams.cli.backup import libpq_environment, manifest_path, pg_tool
from streams.dev import embedded
from tests.faults.traffic import oracle
from tests.helpers import Scenario, WorkerProcess, eventsink, wait_applied, wait_until
from tests.workload import Sent, apply_all_kinds, create_topics, publish

PLANTED = "Pl4nted-backup-secret"
LEDGER = "SELECT * FROM eventsink.offsets_ledger ORDER BY consumer_group, topic, partition"
MIGRATIONS = "SELECT version, name, checksum FROM eventsink.schema_migrations ORDER BY version"
SEQUENCES = "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'eventsink' ORDER BY 1"
TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = 'eventsink' ORDER BY 1"
# What deploy/sql/roles.sql granted (owners differ: a restore makes its user the owner).
GRANTS = """
SELECT c.relname, r.rolname, a.privilege_type
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
JOIN pg_roles r ON r.oid = a.grantee
WHERE n.nspname = 'eventsink' AND r.rolname IN ('eventsink_writer', 'eventsink_retention') ORDER BY 1, 2, 3
"""


def with_secret(dsn: str) -> tuple[str, str]:
    """The DSN with a password (the one it has, else a planted one: the test server trusts)."""
    params = conninfo_to_dict(dsn)
    params.setdefault("password", PLANTED)
    return make_conninfo(**params), str(params["password"])


def rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchall()


def table_counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        tables = [r[0] for r in conn.execute(TABLES)]
        return {t: conn.execute(f"SELECT count(*) FROM eventsink.{t}").fetchone()[0] for t in tables}  # type: ignore[index]


@pytest.fixture
def new_database(pg_admin_dsn: str) -> Iterator[Callable[[], str]]:
    """Creates empty databases on the test server; drops them after the test."""
    admin = with_database(pg_admin_dsn, database_of(pg_admin_dsn))
    made: list[str] = []

    def make() -> str:
        name = f"eventsink_restore_{uuid.uuid4().hex[:10]}"
        made.append(name)
        return embedded.ensure_database(admin, name)

    yield make
    for name in made:
        embedded.drop_database(admin, name)


def test_libpq_tools_get_the_secrets_from_a_private_file_never_from_the_command_line(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    password, key_pass = f"pw-{uuid.uuid4().hex}", f"kp {uuid.uuid4().hex}"
    dsn = make_conninfo(database_url, password=password, sslpassword=key_pass, keepalives_idle="30")
    with libpq_environment(dsn, "eventsink test") as (env, conninfo):
        service_file = Path(env["PGSERVICEFILE"])
        assert service_file.stat().st_mode & 0o077 == 0 and service_file.parent.stat().st_mode & 0o077 == 0
        assert env["PGAPPNAME"] == "eventsink test" and env.get("PGPASSWORD") != password
        params = conninfo_to_dict(conninfo)
        # What has no PG* variable (keepalives_idle), the dbname and the service go on the command line.
        assert params == {"dbname": database_of(database_url), "keepalives_idle": "30", "service": "eventsink"}
        assert password not in " ".join(env.values()) and key_pass not in " ".join(env.values())
        # libpq reads them back from the file: the connection was made with both.
        monkeypatch.setenv("PGSERVICEFILE", str(service_file))
        for var in ("PGHOST", "PGPORT", "PGUSER"):
            if var in env:
                monkeypatch.setenv(var, env[var])
        with psycopg.connect(conninfo) as conn:
            assert conn.info.password == password
            used = {o.keyword.decode(): o.val for o in conn.pgconn.info}
            assert used["sslpassword"] == key_pass.encode()
    assert not service_file.exists() and not service_file.parent.exists()
    with (
        pytest.raises(click.ClickException, match="line break"),
        libpq_environment(make_conninfo(database_url, password="two\nlines"), "eventsink test"),
    ):
        pass


def test_pg_tools_older_than_the_server_are_refused_with_the_package_to_install() -> None:
    with libpq_environment("host=127.0.0.1", "eventsink test") as (env, _):
        tool, major = pg_tool("pg_dump", 12, env)
        assert tool.name == "pg_dump" and major >= 12
        with pytest.raises(click.ClickException, match="postgresql-client-99"):
            pg_tool("pg_restore", 99, env)


def test_the_pg_tool_nearest_the_server_is_taken_not_the_first_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer pg_restore first on PATH writes settings an older server refuses (pg_restore 18's
    SET transaction_timeout on PostgreSQL 15): the oldest one new enough is taken."""
    with libpq_environment("host=127.0.0.1", "eventsink test") as (env, _):
        _, major = pg_tool("pg_restore", 0, env)
    newer = tmp_path / "pg_restore"
    newer.write_text(f'#!/bin/sh\necho "pg_restore (PostgreSQL) {major + 3}.1"\n')
    newer.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with libpq_environment("host=127.0.0.1", "eventsink test") as (env, _):
        tool, found = pg_tool("pg_restore", major, env)
        assert tool != newer and found == major
        assert pg_tool("pg_restore", major + 1, env)[1] > major  # only newer ones fit: one of them


def test_backup_refuses_a_database_without_the_schema_and_an_existing_file(
    database_url: str, new_database: Callable[[], str], tmp_path: Path
) -> None:
    done = eventsink("backup", str(tmp_path / "none.dump"), env={"DATABASE_URL": new_database()})
    assert done.returncode == 1 and "has no eventsink schema" in done.stderr, done.stderr
    assert not list(tmp_path.iterdir()), "a failed backup leaves no file behind"
    existing = tmp_path / "existing.dump"
    existing.write_text("keep me")
    done = eventsink("backup", str(existing), env={"DATABASE_URL": database_url})
    # A usage error, like a missing directory: the command line names a file it will not write.
    assert done.returncode == 2 and "--force" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert existing.read_text() == "keep me"


def test_backup_into_a_missing_directory_is_a_usage_error(database_url: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    done = eventsink("backup", str(missing / "x.dump"), env={"DATABASE_URL": database_url})
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and str(missing) in done.stderr, done.stderr
    assert "FileNotFoundError" not in done.stderr and not missing.exists()


def test_restore_without_its_manifest_needs_without_manifest(
    own_database: str, new_database: Callable[[], str], tmp_path: Path
) -> None:
    """A dump copied without its manifest is refused, --yes or not: its checksum and row counts
    cannot be checked. `--without-manifest` restores it anyway, and says what was not checked."""
    tenant = uuid.uuid4()
    with psycopg.connect(own_database) as conn:
        for i in range(5):
            conn.execute(
                "INSERT INTO eventsink.metrics_raw (tenant_id, dedupe_id, name, value, occurred_at, kafka_topic, "
                "kafka_partition, kafka_offset) VALUES (%s, %s, 'cpu', 1, now(), 't', 0, %s)",
                (tenant, f"d{i}", i),
            )
    dump = tmp_path / "eventsink.dump"
    assert eventsink("backup", str(dump), env={"DATABASE_URL": own_database}).returncode == 0
    manifest_path(dump).unlink()
    target = new_database()
    refused = eventsink("restore", str(dump), "--yes", env={"DATABASE_URL": target})
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "--without-manifest" in refused.stderr and "checksum" in refused.stderr, refused.stderr
    assert rows(target, "SELECT to_regnamespace('eventsink')") == [(None,)], "nothing was restored"
    done = eventsink("restore", str(dump), "--without-manifest", env={"DATABASE_URL": target})
    assert done.returncode == 0, done.stderr
    assert "not checked" in done.stderr, done.stderr
    assert rows(target, "SELECT count(*) FROM eventsink.metrics_raw") == [(5,)]


def test_a_backup_and_its_manifest_are_readable_by_their_owner_only(database_url: str, tmp_path: Path) -> None:
    dump = tmp_path / "eventsink.dump"
    dump.write_text("an older, world-readable file")
    dump.chmod(0o644)
    # What a usual umask makes of a new file, and what the backup must not be.
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "backup", str(dump), "--force"],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=180,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert done.returncode == 0, done.stderr
    for path in (dump, manifest_path(dump)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert orjson.loads(manifest_path(dump).read_bytes())["bytes"] == dump.stat().st_size


def test_restore_refuses_a_backup_that_does_not_match_its_manifest(
    database_url: str, new_database: Callable[[], str], tmp_path: Path
) -> None:
    dump = tmp_path / "eventsink.dump"
    assert eventsink("backup", str(dump), env={"DATABASE_URL": database_url}).returncode == 0
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    target = new_database()
    done = eventsink("restore", str(dump), env={"DATABASE_URL": target})
    assert done.returncode == 1 and "checksum" in done.stderr, done.stderr
    assert rows(target, "SELECT to_regnamespace('eventsink')") == [(None,)], "nothing was restored"


def test_restore_checks_the_row_counts_before_its_commit(
    database_url: str, new_database: Callable[[], str], tmp_path: Path
) -> None:
    """The manifest's row counts are checked by a statement of the restore's own transaction: a
    difference rolls it back (nothing changes), and rows another session writes after the commit
    (a worker left running) can no longer make a faithful restore look wrong."""
    dump = tmp_path / "eventsink.dump"
    assert eventsink("backup", str(dump), env={"DATABASE_URL": database_url}).returncode == 0
    manifest = orjson.loads(manifest_path(dump).read_bytes())
    backed_up = manifest["tables"]["metrics_raw"]
    manifest["tables"]["metrics_raw"] = backed_up + 1  # the dump itself still matches its checksum
    manifest_path(dump).write_bytes(orjson.dumps(manifest))
    target = new_database()
    done = eventsink("restore", str(dump), env={"DATABASE_URL": target})
    assert done.returncode == 1, done.stderr
    assert f"metrics_raw {backed_up} restored, {backed_up + 1} in the manifest" in done.stderr, done.stderr
    assert "Nothing was changed" in done.stderr
    assert rows(target, "SELECT to_regnamespace('eventsink')") == [(None,)], "nothing was restored"


def _children(pid: int) -> dict[int, str]:
    """{pid: command name} of the processes whose parent is `pid` (Linux's /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
            found[int(entry.name)] = stat[stat.index("(") + 1 : stat.rindex(")")]
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_restore_whose_tool_is_killed_does_not_commit_behind_its_back(
    new_database: Callable[[], str], tmp_path: Path
) -> None:
    """The whole script and its COMMIT are in psql's input (psql waits for a lock another session
    holds), pg_restore is done, and the tool is killed (SIGKILL: no handler of its own runs). psql
    must die with it, so that the restore never commits: the target keeps its schema."""
    # An empty schema: its script (about 24 KB) fits in psql's input pipe, so pg_restore finishes
    # and the tool sends the COMMIT while psql still waits.
    source = new_database()
    migrate(source)
    dump = tmp_path / "eventsink.dump"
    assert eventsink("backup", str(dump), env={"DATABASE_URL": source}).returncode == 0
    target = new_database()
    assert eventsink("restore", str(dump), env={"DATABASE_URL": target}).returncode == 0
    schema = "SELECT 'eventsink'::regnamespace::oid, 'eventsink.metrics_raw'::regclass::oid"
    before = rows(target, schema)
    psql_backends = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'eventsink restore'"
    )
    with psycopg.connect(target) as blocker:
        blocker.execute("LOCK TABLE eventsink.metrics_raw IN ACCESS SHARE MODE")  # the restore's DROP waits
        tool = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "restore", "--yes", str(dump)],
            env={**os.environ, "DATABASE_URL": target, "EVENTSINK_LOG_FORMAT": "json"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(
                lambda: rows(target, psql_backends + " AND wait_event_type = 'Lock'") == [(1,)],
                60,
                0.05,
                what="the restore's psql waiting for the lock",
            )
            # pg_restore has written everything (the tool then sends the check and COMMIT and waits for psql).
            wait_until(lambda: "pg_restore" not in _children(tool.pid).values(), 60, 0.05, what="pg_restore done")
            wchan = Path(f"/proc/{tool.pid}/wchan")
            wait_until(lambda: wchan.read_text() == "do_wait", 10, 0.05, what="the tool waiting for psql")
            tool.kill()
        finally:
            tool.kill()
            tool.wait()
        blocker.rollback()  # the lock goes: a psql still alive would go on and commit now
    wait_until(lambda: rows(target, psql_backends) == [(0,)], 60, 0.05, what="the restore's session gone")
    assert rows(target, schema) == before, "the killed restore committed"


def test_restore_refuses_a_target_schema_newer_than_the_backup(
    database_url: str, new_database: Callable[[], str], tmp_path: Path
) -> None:
    dump = tmp_path / "eventsink.dump"
    assert eventsink("backup", str(dump), env={"DATABASE_URL": database_url}).returncode == 0
    target = new_database()
    migrate(target)
    with psycopg.connect(target) as conn:
        conn.execute("CREATE TABLE eventsink.from_a_later_migration (id int)")
    done = eventsink("restore", str(dump), env={"DATABASE_URL": target})
    assert done.returncode == 1 and "from_a_later_migration" in done.stderr, done.stderr


@pytest.mark.e2e
@pytest.mark.slow
def test_a_restored_backup_has_the_same_rows_ledger_and_sequences_and_passes_verify(
    scenario: Scenario, new_database: Callable[[], str], tmp_path: Path
) -> None:
    s = scenario
    sent = apply_all_kinds(s, duplicates=0.1, seed=31, out_of_order=0.5).metrics
    source, secret = with_secret(s.dsn)
    outputs = []

    dump = tmp_path / "eventsink.dump"
    made = eventsink("backup", str(dump), env={"DATABASE_URL": source})
    outputs.append(made)
    assert made.returncode == 0, made.stderr
    manifest = orjson.loads(manifest_path(dump).read_bytes())
    counts = table_counts(s.dsn)
    assert manifest["tables"] == counts and manifest["bytes"] == dump.stat().st_size
    assert counts["metrics_raw"] >= sent.unique and counts["chat_messages"] and counts["analysis_events"]

    # Into an empty database: the schema is created, rows, ledger and identity sequences are the same.
    restored = new_database()
    target, target_secret = with_secret(restored)
    done = eventsink("restore", str(dump), "--target-url", target, env={"DATABASE_URL": source})
    outputs.append(done)
    assert done.returncode == 0, done.stderr
    assert table_counts(restored) == counts
    mine = [r for r in rows(restored, LEDGER) if r[0] == s.group]
    assert {r[1] for r in mine} == {s.topic, s.chat_topic, s.analysis_topic}
    assert rows(s.dsn, GRANTS), "the test database has deploy/sql/roles.sql's grants"
    for query in (LEDGER, MIGRATIONS, SEQUENCES, GRANTS):
        assert rows(restored, query) == rows(s.dsn, query), query
    assert f"{s.group}-dedupe-metric-changelog" in done.stderr, "the restore names the changelogs to delete"
    # And what forgetting them costs, as the workers behave (test below): a warning, not data.
    assert "dedupe entries past the ledger dropped" in " ".join(done.stderr.split())
    oracle(dataclasses.replace(s, dsn=restored))

    # Into a database whose schema holds rows: only with --yes, and the result is the same.
    refused = eventsink("restore", str(dump), env={"DATABASE_URL": target})
    outputs.append(refused)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    with psycopg.connect(restored) as conn:
        conn.execute("DELETE FROM eventsink.metrics_raw WHERE id IN (SELECT id FROM eventsink.metrics_raw LIMIT 10)")
    replaced = eventsink("restore", str(dump), "--yes", env={"DATABASE_URL": target})
    outputs.append(replaced)
    assert replaced.returncode == 0, replaced.stderr
    assert table_counts(restored) == counts

    # A restore that fails half-way changes nothing: a view outside the schema blocks a DROP.
    with psycopg.connect(restored) as conn:
        conn.execute("CREATE VIEW public.blocks_restore AS SELECT id FROM eventsink.metrics_raw")
        conn.execute(
            "DELETE FROM eventsink.offsets_ledger WHERE consumer_group = %s AND topic = %s", (s.group, s.topic)
        )
    before = table_counts(restored)
    failed = eventsink("restore", str(dump), "--yes", env={"DATABASE_URL": target})
    outputs.append(failed)
    assert failed.returncode == 1 and "blocks_restore" in failed.stderr and "Nothing was changed" in failed.stderr
    assert table_counts(restored) == before

    for result in outputs:
        for secret_ in {secret, target_secret}:
            assert secret_ not in result.stdout + result.stderr, f"a password leaked: {result.args[3:5]}"


@pytest.mark.e2e
@pytest.mark.slow
def test_workers_refill_what_a_restore_to_an_earlier_point_took_away(scenario: Scenario, tmp_path: Path) -> None:
    """The dedupe changelogs remember keys committed after the backup; restarting on the restored
    database without deleting them must not drop those records as duplicates."""
    s, sent = scenario, Sent()
    create_topics(s)
    w = WorkerProcess(s.env(), s.data_dir / "before.log").start()
    try:
        publish(s, sent, 800, seed=41)
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
        dump = tmp_path / "point.dump"
        assert eventsink("backup", str(dump), env={"DATABASE_URL": s.dsn}).returncode == 0
        publish(s, sent, 800, seed=42)  # committed after the backup: their keys go to the changelog
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    finally:
        assert w.stop() == 0
    restored = eventsink("restore", str(dump), "--yes", env={"DATABASE_URL": s.dsn})
    assert restored.returncode == 0, restored.stderr
    assert mine(s, sent) < sent.unique
    after = WorkerProcess(s.env(), s.data_dir / "after.log").start()
    try:
        wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
    finally:
        after.stop()
    assert "dedupe entries past the ledger dropped" in after.log_text()
    assert mine(s, sent) == sent.unique
    oracle(s)


def mine(s: Scenario, sent: Sent) -> int:
    """This test's metric rows (the database is shared by the run's tests)."""
    with psycopg.connect(s.dsn) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM eventsink.metrics_raw WHERE tenant_id = ANY(%s::uuid[])", (sent.tenants,)
        ).fetchone()  # type: ignore[misc]
    return int(count)
