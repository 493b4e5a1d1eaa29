"""A PostgreSQL primary and a streaming standby of it, both of the test's own (the shared server
allows no replication connection): `initdb`, `pg_basebackup -R`, two postmasters on free
loopback ports, in a temporary directory owned by the `postgres` OS user when the tests run as
root (PostgreSQL refuses root). Small and fast: a few seconds, tens of megabytes."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from psycopg.conninfo import make_conninfo

from streams.dev.embedded import free_port

# Small and disposable: no durability, little memory.
SERVER_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB"


def server_bin() -> Path | None:
    """The newest Debian PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


class PrimaryAndStandby:
    def __init__(self) -> None:
        binaries = server_bin()
        if binaries is None:
            raise FileNotFoundError("PostgreSQL server binaries not found under /usr/lib/postgresql")
        self.bin = binaries
        self.dir = Path(tempfile.mkdtemp(prefix="eventsink-standby-"))
        self.ports = {"primary": free_port(), "standby": free_port()}
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            self._as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self._started: list[str] = []

    def __enter__(self) -> PrimaryAndStandby:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [str(self.bin / tool), *args], cwd=self.dir, capture_output=True, text=True, timeout=120, **self._as
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stdout[-1500:]} {done.stderr[-1500:]}")

    def _start(self, name: str) -> None:
        options = f"-c port={self.ports[name]} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir}"
        data = str(self.dir / name)
        options = f"{options} {SERVER_OPTIONS}"
        self._run("pg_ctl", "-D", data, "-l", f"{data}.log", "-w", "-t", "60", "-o", options, "start")
        self._started.append(name)

    def start(self) -> PrimaryAndStandby:
        # initdb's pg_hba trusts local and loopback replication connections too.
        primary = str(self.dir / "primary")
        self._run("initdb", "-D", primary, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self._start("primary")
        self._run(
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(self.ports["primary"]), "-U", "postgres",
            "-D", str(self.dir / "standby"), "-R", "-X", "stream", "-c", "fast", "--no-sync",
        )  # fmt: skip
        self._start("standby")
        return self

    def stop(self) -> None:
        for name in reversed(self._started):
            try:
                self._run("pg_ctl", "-D", str(self.dir / name), "-m", "immediate", "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        self._started.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, name: str, dbname: str = "postgres") -> str:
        return make_conninfo(host="127.0.0.1", port=self.ports[name], user="postgres", dbname=dbname)

    def prefer_standby(self, dbname: str = "postgres") -> str:
        """Both servers in one DSN, primary first: libpq picks the standby."""
        return make_conninfo(
            host="127.0.0.1,127.0.0.1",
            port=f"{self.ports['primary']},{self.ports['standby']}",
            user="postgres",
            dbname=dbname,
            target_session_attrs="prefer-standby",
        )
