"""A real PgBouncer (Debian's `pgbouncer`, 1.18) in transaction pooling in front of the tests'
PostgreSQL, as production runs it (README, Deploying: PgBouncer).

It runs as the `postgres` OS user when the tests run as root (PgBouncer refuses root), in a
directory of its own, on a free port, with three server connections per database and user: fewer
than a worker's pool holds, so that transactions of one client really do move between server
connections. `.ci/run` (through the Makefile) installs the package when it is missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from streams.dev.embedded import free_port

# Every role the tests connect as: trust authentication still wants the user listed.
USERS = ("postgres", "eventsink_writer", "eventsink_retention", "eventsink_migrator")
POOL_SIZE = 3

CONFIG = """\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir = {dir}
pidfile = {dir}/pgbouncer.pid
logfile = {dir}/pgbouncer.log
auth_type = trust
auth_file = {dir}/users.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = {pool}
max_client_conn = 500
; 1: each transaction takes the server connection idle the longest, so that a client's
; consecutive transactions land on different ones even when it is alone (0, the default, reuses
; the last one used)
server_round_robin = {round_robin}
; what libpq clients send that 1.18 would refuse; dropped, never applied (eventsink sets its own
; settings per transaction, sinks/local_settings.py)
ignore_startup_parameters = extra_float_digits,options,search_path
"""


@dataclass(frozen=True)
class Route:
    """How a test's workers reach PostgreSQL (the `route` fixture): `route(dsn)` is the DSN to give
    them, `route.name` is `direct` or `pgbouncer`."""

    name: str
    through: Callable[[str], str]

    def __call__(self, dsn: str) -> str:
        return self.through(dsn)


def executable() -> str | None:
    """pgbouncer on PATH or where Debian puts it (/usr/sbin is not on every user's PATH)."""
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


class PgBouncer:
    """`with PgBouncer(server_dsn) as bouncer:` then `bouncer.dsn(some_dsn)` reaches the same
    database and role through PgBouncer."""

    def __init__(self, server_dsn: str, pool_size: int = POOL_SIZE, round_robin: bool = False) -> None:
        params = conninfo_to_dict(server_dsn)
        self.server_host = str(params.get("host") or "127.0.0.1")
        self.server_port = int(params.get("port") or 5432)
        self.pool_size = pool_size
        self.round_robin = round_robin
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="eventsink-pgbouncer-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def log_path(self) -> Path:
        return self.dir / "pgbouncer.log"

    def start(self) -> PgBouncer:
        binary = executable()
        if binary is None:
            raise FileNotFoundError(
                "pgbouncer is not installed (apt-get install pgbouncer; `make test` does it as root)"
            )
        config = self.dir / "pgbouncer.ini"
        config.write_text(
            CONFIG.format(
                round_robin=int(self.round_robin),
                host=self.server_host,
                port=self.server_port,
                listen=self.port,
                dir=self.dir,
                pool=self.pool_size,
            )
        )
        (self.dir / "users.txt").write_text("".join(f'"{u}" ""\n' for u in USERS))
        user: dict[str, Any] = {}
        if os.geteuid() == 0:  # PgBouncer will not run as root
            account = pwd.getpwnam("postgres")
            for path in (self.dir, config, self.dir / "users.txt"):
                os.chown(path, account.pw_uid, account.pw_gid)
            user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self.proc = subprocess.Popen([binary, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, **user)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                with self.admin() as conn:
                    conn.execute("SHOW VERSION")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, dsn: str) -> str:
        """`dsn` (its database, role and other parameters) through PgBouncer."""
        params = conninfo_to_dict(dsn)
        params.update(host="127.0.0.1", port=str(self.port))
        return make_conninfo(**params)  # type: ignore[arg-type]

    def admin(self) -> psycopg.Connection[Any]:
        """PgBouncer's admin console (SHOW POOLS, SHOW STATS, ...): simple query protocol only."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            dbname="pgbouncer",
            user="postgres",
            autocommit=True,
            cursor_factory=psycopg.ClientCursor,
        )

    def show(self, what: str) -> list[dict[str, Any]]:
        """`SHOW <what>` on the admin console, as dicts."""
        with self.admin() as conn:
            cur = conn.execute(f"SHOW {what}")
            names = [c.name for c in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def transactions(self, database: str) -> int:
        """Transactions PgBouncer has passed to `database` since it started."""
        return sum(int(r["total_xact_count"]) for r in self.show("STATS") if r["database"] == database)

    def filled(self, dsn: str) -> str:
        """`dsn` through PgBouncer, once its pool has opened every server connection (as many
        clients in a transaction at once as it has): with round robin, a lone client's
        consecutive transactions then run on different server connections."""
        through = self.dsn(dsn)
        clients = [psycopg.connect(through) for _ in range(self.pool_size)]
        try:
            pids = {c.execute("SELECT pg_backend_pid()").fetchone() for c in clients}
            assert len(pids) == self.pool_size, pids
        finally:
            for c in clients:
                c.rollback()  # ended, not abandoned: a server connection left in a transaction is closed
                c.close()
        return through

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
