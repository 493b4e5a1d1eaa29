"""The security promises: encrypted in production, secrets from files, least privilege, no leaks."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sinks.dsn import with_user
from streams.settings import SettingsError, load
from tests.e2e.test_worker import _pg_address, proxied
from tests.helpers import Scenario, WorkerProcess, wait_applied, wait_until
from tests.proxy import TcpProxy
from tests.workload import Sent, create_topics, publish

PASSWORD = "planted-" + uuid.uuid4().hex


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTSINK_", "DATABASE_URL", "KAFKA_"))}
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )


def with_password(dsn: str, **extra: str) -> str:
    params = conninfo_to_dict(dsn)
    params.update(password=PASSWORD, **extra)
    return make_conninfo(**params)


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"DATABASE_URL": f"postgresql://app:{PASSWORD}@db/events"}, "sslmode=(unset)"),
        ({"DATABASE_URL": f"postgresql://app:{PASSWORD}@db/events?sslmode=prefer"}, "sslmode=prefer"),
        ({"DATABASE_URL": f"postgresql://app:{PASSWORD}@db/events?sslmode=verify-full"}, "Kafka over PLAINTEXT"),
        (
            {
                "DATABASE_URL": f"postgresql://app:{PASSWORD}@db/events?sslmode=require",
                "EVENTSINK_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "EVENTSINK_KAFKA_SASL_USERNAME": "u",
                "EVENTSINK_KAFKA_SASL_PASSWORD": PASSWORD,
            },
            "Kafka over SASL_PLAINTEXT",
        ),
    ],
)
def test_production_refuses_unencrypted_connections_and_says_what_to_change(
    env: dict[str, str], complaint: str
) -> None:
    done = cli("migrate", env={"EVENTSINK_ENV": "production", **env})
    assert done.returncode == 1
    assert complaint in done.stderr and ("sslmode=verify-full" in done.stderr or "SASL_SSL" in done.stderr)
    assert PASSWORD not in done.stdout + done.stderr


def test_production_accepts_tls_everywhere(tmp_path: Path) -> None:
    settings = load(
        env="production",
        database_url="postgresql://app@db/events?sslmode=verify-full",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password=PASSWORD,
    )
    options = settings.kafka_security()
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "svc" and options["ssl_context"].check_hostname
    credentials = settings.faust_credentials()
    assert type(credentials).__name__ == "SASLCredentials" and credentials.username == "svc"
    assert PASSWORD not in repr(settings)
    with pytest.raises(SettingsError, match="needs EVENTSINK_KAFKA_SASL_USERNAME"):
        load(kafka_security_protocol="SASL_SSL")


def test_secrets_can_come_from_files(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "database_url"
    secret.write_text(with_password(database_url) + "\n")
    kafka_secret = tmp_path / "kafka_password"
    kafka_secret.write_text(PASSWORD)
    done = cli("migrate", "--status", env={"DATABASE_URL_FILE": str(secret)})
    assert done.returncode == 0 and "metrics_raw" in done.stdout, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    monkeypatch.setenv("EVENTSINK_KAFKA_SASL_PASSWORD_FILE", str(kafka_secret))
    settings = load(kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc")
    assert settings.kafka_security()["sasl_plain_password"] == PASSWORD
    both = cli("migrate", env={"DATABASE_URL_FILE": str(secret), "DATABASE_URL": database_url})
    assert both.returncode == 1 and "not both" in both.stderr
    missing = cli("migrate", env={"DATABASE_URL_FILE": str(tmp_path / "nope")})
    assert missing.returncode == 1 and "DATABASE_URL_FILE" in missing.stderr and "No such file" in missing.stderr


def test_the_writer_role_cannot_delete_or_change_the_schema(writer_url: str, database_url: str) -> None:
    if writer_url == database_url:
        pytest.skip("the writer role is not available on this server")
    with psycopg.connect(writer_url, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("eventsink_writer",)
        conn.execute("CREATE TEMP TABLE scratch (x int)")  # staging tables are allowed
        conn.execute("SELECT count(*) FROM eventsink.offsets_ledger")
        for statement in (
            "DELETE FROM eventsink.metrics_raw",
            "TRUNCATE eventsink.chat_sessions",
            "DROP TABLE eventsink.metrics_raw",
            "CREATE TABLE eventsink.evil (x int)",
            "ALTER TABLE eventsink.metrics_raw ADD COLUMN x int",
            "SELECT * FROM eventsink.schema_migrations",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_retention_runs_as_its_own_role(database_url: str, writer_url: str) -> None:
    if writer_url == database_url:
        pytest.skip("the roles are not available on this server")
    done = cli(
        "retention",
        "--metrics-days",
        "36500",
        "--chat-days",
        "1",
        "--analysis-deleted-days",
        "1",
        env={"DATABASE_URL": with_user(database_url, "eventsink_retention")},
    )
    assert done.returncode == 0, done.stderr
    with psycopg.connect(with_user(database_url, "eventsink_retention"), autocommit=True) as conn:
        for statement in (
            "DELETE FROM eventsink.chat_messages",
            "DELETE FROM eventsink.offsets_ledger",
            "INSERT INTO eventsink.metrics_raw (tenant_id, dedupe_id, name, value, occurred_at, kafka_topic, "
            "kafka_partition, kafka_offset) VALUES (gen_random_uuid(), 'x', 'x', 1, now(), 't', 0, 0)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    with psycopg.connect(writer_url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE eventsink.retention_horizons SET horizon = now()")


@pytest.mark.e2e
def test_a_planted_password_appears_nowhere(scenario: Scenario) -> None:
    """Workers run as the writer; with the database unreachable and a password in the DSN, nothing
    the worker writes or serves contains the password."""
    s, sent = scenario, Sent()
    create_topics(s)
    with TcpProxy(*_pg_address(s.dsn)) as proxy:
        w = WorkerProcess(s.env(proxied(s.worker_dsn, proxy, PASSWORD)), s.data_dir / "w.log").start()
        try:
            publish(s, sent, 300, invalid=0.05, seed=61)
            wait_applied(s.dsn, s.group, s.topic, sent.last_offsets)
            with psycopg.connect(s.dsn) as conn:
                users = {
                    r[0]
                    for r in conn.execute(
                        "SELECT usename FROM pg_stat_activity WHERE application_name = %s", (f"eventsink-{s.group}",)
                    )
                }
            assert users == {conninfo_to_dict(s.worker_dsn).get("user")}
            proxy.cut()
            publish(s, sent, 100, seed=62)
            web = f"http://127.0.0.1:{w.env['EVENTSINK_WEB_PORT']}"
            wait_until(lambda: _get(f"{web}/readyz")[0] == 503, 30, what="unready")
            wait_until(lambda: "batch not committed; retrying" in w.log_text(), 60, what="a failed batch logged")
            pages = [_get(f"{web}{path}")[1] for path in ("/readyz", "/metrics", "/healthz")]
        finally:
            proxy.restore()
            w.stop()
    assert not any(PASSWORD in page for page in pages)
    assert PASSWORD not in w.log_text()
    helped = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "DATABASE_URL": with_password(s.dsn)},
        timeout=60,
    )
    assert helped.returncode == 0 and PASSWORD not in helped.stdout


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
