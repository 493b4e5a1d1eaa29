"""A pg_auto_failover formation on loopback for the failover tests: a monitor, a primary and a
synchronous secondary, each a `pg_autoctl run` of the `postgres` OS user (pg_autoctl refuses
root), on free ports, in a directory of its own.

What the machines taught (see /work/shared/postgres-production.md): each formation has its own
XDG runtime/config/data directories (pg_autoctl keeps pid files in one shared default
otherwise); the monitor listens on 127.0.0.1 only when told (`postgresql.listen_addresses`);
pg_autoctl's tuning reserves GBs of `shared_buffers`, so `postgresql.auto.conf` (read last, and
copied to the secondary by pg_basebackup) sets a small one; creating the secondary waits on a
spread checkpoint unless the primary is made to CHECKPOINT meanwhile. PostgreSQL's processes
leave the keeper's process group: a node is stopped through its postmaster (SIGQUIT: immediate
shutdown; SIGKILL would leak its shared memory).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from streams.dev.embedded import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PACKAGE = "postgresql-15-auto-failover"
DBNAME = "eventsink"
# pg_auto_failover's health checks, shortened so that a node that died is failed over in
# seconds, not ~50 s (its defaults: a 5 s period, 2 retries 2 s apart, 20 s without a report,
# then 30 s for the old primary to demote itself). A test value only: in production the demote
# timeout must exceed the keepers' network partition timeout (20 s), or a primary cut off from
# the monitor could still take writes while its standby is promoted.
MONITOR_TIMEOUTS = {
    "pgautofailover.primary_demote_timeout": 5000,
    "pgautofailover.health_check_period": 1000,
    "pgautofailover.health_check_timeout": 1000,
    "pgautofailover.health_check_max_retries": 1,
    "pgautofailover.health_check_retry_delay": 500,
    "pgautofailover.node_considered_unhealthy_timeout": 4000,
    "pgautofailover.startup_grace_period": 2000,
}


def missing() -> str | None:
    """Why a formation cannot run here, or None. `make test` installs the package as root
    (`.ci/packages`); pg_autoctl then runs as `postgres`, and as ourselves when we are not root."""
    if shutil.which("pg_autoctl") is None or not (PG_BIN / "postgres").exists():
        return f"pg_autoctl is not installed (Debian package {PACKAGE}; `make test` installs it as root)"
    return None


def _owner() -> dict[str, object]:
    """Run pg_autoctl as `postgres` when we are root (it refuses root), else as ourselves."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


@dataclass
class Node:
    name: str
    port: int
    pgdata: Path
    log: Path
    keeper: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={DBNAME} user=postgres connect_timeout=3"

    def postmaster(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def backends(self) -> list[int]:
        """The postmaster's children (backends, walsender, checkpointer, ...)."""
        pm = self.postmaster()
        if pm is None:
            return []
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pm)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]


@dataclass
class Formation:
    """`root`: a directory the `postgres` user can reach (pytest's tmp_path is root's alone);
    `Formation.new()` makes one in the system's temporary directory."""

    root: Path
    monitor: Node = field(init=False)
    nodes: list[Node] = field(default_factory=list)
    _env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("run", "config", "share"):
            (self.root / sub).mkdir(exist_ok=True)
        if os.geteuid() == 0:
            for path in (self.root, *self.root.iterdir()):
                shutil.chown(path, "postgres", "postgres")
        os.chmod(self.root, 0o700)
        self._env = {
            "PATH": f"{PG_BIN}:/usr/bin:/bin",
            "HOME": str(self.root),
            "XDG_RUNTIME_DIR": str(self.root / "run"),
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "XDG_DATA_HOME": str(self.root / "share"),
            "LANG": "C.UTF-8",
        }
        self.monitor = self._node("monitor")

    @classmethod
    def new(cls) -> Formation:
        return cls(Path(tempfile.mkdtemp(prefix="eventsink-pgaf-")))

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def _node(self, name: str) -> Node:
        return Node(name, free_port(), self.root / name, self.root / f"{name}.log")

    @property
    def monitor_uri(self) -> str:
        return f"postgres://autoctl_node@127.0.0.1:{self.monitor.port}/pg_auto_failover?sslmode=disable"

    @property
    def dsn(self) -> str:
        """Every data node, as a worker is told them: libpq finds the one that takes writes."""
        hosts = ",".join("127.0.0.1" for _ in self.nodes)
        ports = ",".join(str(n.port) for n in self.nodes)
        return (
            f"host={hosts} port={ports} dbname={DBNAME} user=postgres target_session_attrs=read-write connect_timeout=3"
        )

    # -- processes ------------------------------------------------------------------------------

    def autoctl(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            ["pg_autoctl", *args],
            env=self._env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            **_owner(),  # type: ignore[arg-type]
        )
        if done.returncode != 0:
            # The first errors say why; the last lines only that the service gave up.
            errors = [line for line in done.stderr.splitlines() if " ERROR " in line or " FATAL " in line]
            raise RuntimeError(
                f"pg_autoctl {' '.join(args)} failed ({done.returncode}); first errors: "
                f"{chr(10).join(errors[:6])[:3000]}\n...\n{done.stderr[-1500:]}"
            )
        return done.stdout

    def _run(self, node: Node) -> None:
        log = open(node.log, "ab")
        node.keeper = subprocess.Popen(
            ["pg_autoctl", "run", "--pgdata", str(node.pgdata)],
            env=self._env,
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as one
            **_owner(),  # type: ignore[arg-type]
        )
        log.close()

    def _small(self, node: Node) -> None:
        with open(node.pgdata / "postgresql.auto.conf", "a") as conf:
            conf.write("shared_buffers = '16MB'\nmax_connections = 60\n")

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Formation:
        m = self.monitor
        self.autoctl(
            "create", "monitor", "--pgdata", str(m.pgdata), "--pgport", str(m.port), "--hostname", "127.0.0.1",
            "--auth", "trust", "--no-ssl", "--pgctl", str(PG_BIN / "pg_ctl"),
        )  # fmt: skip
        self.autoctl("config", "set", "--pgdata", str(m.pgdata), "postgresql.listen_addresses", "127.0.0.1")
        self._small(m)
        with open(m.pgdata / "postgresql.auto.conf", "a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in MONITOR_TIMEOUTS.items())
        self._run(m)
        self._wait_sql(m.dsn.replace(f"dbname={DBNAME}", "dbname=pg_auto_failover"), "the monitor")
        primary = self.add_node("node1")
        self._wait_state({primary.name: "single"})
        checkpoints = threading.Event()
        # pg_basebackup waits for a spread checkpoint of the primary unless one is forced.
        ticker = threading.Thread(target=self._checkpoint_until, args=(primary, checkpoints), daemon=True)
        ticker.start()
        try:
            secondary = self.add_node("node2")
        finally:
            checkpoints.set()
            ticker.join()
        self._wait_state({primary.name: "primary", secondary.name: "secondary"})
        return self

    def add_node(self, name: str) -> Node:
        node = self._node(name)
        for attempt in (1, 2):
            try:
                self.autoctl(
                    "create", "postgres", "--pgdata", str(node.pgdata), "--pgport", str(node.port),
                    "--hostname", "127.0.0.1", "--listen", "127.0.0.1", "--auth", "trust", "--no-ssl",
                    "--dbname", DBNAME, "--monitor", self.monitor_uri, "--name", name,
                    "--pgctl", str(PG_BIN / "pg_ctl"),
                )  # fmt: skip
                break
            except RuntimeError:
                # Seen once in a clean-clone run with 8 test processes on 2 cores: node2's
                # registration failed, and pg_autoctl's node-init retried it against its own
                # half-made registration until it gave up. Drop what it left and start afresh.
                if attempt == 2:
                    raise
                self._forget(node)
                node = self._node(name)
        if not self.nodes:
            self._small(node)  # the secondary copies it with the primary's data directory
        self.nodes.append(node)
        self._run(node)
        return node

    def _forget(self, node: Node) -> None:
        """What a failed `create postgres` left: its registration, its server, its files."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.autoctl("drop", "node", "--monitor", self.monitor_uri, "--formation", "default",
                         "--name", node.name, "--force", "--wait", "0", timeout=60)  # fmt: skip
        if (node.pgdata / "postmaster.pid").exists():
            subprocess.run(
                [str(PG_BIN / "pg_ctl"), "stop", "-D", str(node.pgdata), "-m", "immediate"],
                env=self._env, capture_output=True, timeout=60, **_owner(),  # type: ignore[arg-type]
            )  # fmt: skip
        for path in (node.pgdata, *(self.root.glob(f"*/pg_autoctl{node.pgdata}"))):
            shutil.rmtree(path, ignore_errors=True)

    def _checkpoint_until(self, node: Node, done: threading.Event) -> None:
        while not done.wait(0.5):
            try:
                with psycopg.connect(node.dsn, autocommit=True) as conn:
                    conn.execute("CHECKPOINT")
            except psycopg.Error:
                pass

    def _wait_sql(self, dsn: str, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{what} did not answer within {timeout}s") from None
                time.sleep(0.2)

    def states(self) -> dict[str, tuple[str, str]]:
        """Each node's (reported, assigned) state, as the monitor knows them."""
        with psycopg.connect(self.monitor_uri.replace("autoctl_node", "postgres"), autocommit=True) as conn:
            rows = conn.execute("SELECT nodename, reportedstate::text, goalstate::text FROM pgautofailover.node")
            return {name: (reported, goal) for name, reported, goal in rows}

    def _wait_state(self, want: dict[str, str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                states = self.states()
            except psycopg.Error:
                states = {}
            if all(states.get(n) == (s, s) for n, s in want.items()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the formation did not reach {want} within {timeout}s: {states}")
            time.sleep(0.2)

    def primary(self) -> Node:
        states = self.states()
        for node in self.nodes:
            if states.get(node.name) == ("primary", "primary"):
                return node
        raise AssertionError(f"no primary: {states}")

    def settled(self, timeout: float = 120) -> Node:
        """Until one node is primary and every other running node is its secondary; the primary."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.states()
            roles = sorted(states.get(n.name, ("", ""))[0] for n in self.nodes if n.keeper and n.keeper.poll() is None)
            if roles == ["primary", "secondary"] and all(r == g for r, g in states.values()):
                return self.primary()
            if time.monotonic() > deadline:
                raise AssertionError(f"the formation did not settle within {timeout}s: {states}")
            time.sleep(0.2)

    def perform_failover(self, attempts: int = 3) -> None:
        """A planned failover (`pg_autoctl perform failover`), waited for by pg_autoctl itself.

        Run again, as an operator would, when the monitor's function died of a deadlock with a
        keeper's `node_active` (pg_auto_failover issue #1004: the two take the group's advisory
        lock and the node row in opposite orders; pg_autoctl retries it itself from PR #1171, newer
        than Debian's package). The deadlock aborts perform_failover's transaction whole, so the
        formation is still as it was: seen in a clean-clone CI run, 8 test processes on 2 cores."""
        for attempt in range(1, attempts + 1):
            try:
                self.autoctl("perform", "failover", "--pgdata", str(self.monitor.pgdata), timeout=180)
                return
            except RuntimeError as e:
                if "deadlock detected" not in str(e) or attempt == attempts:
                    raise
                self.settled()

    def crash(self, node: Node) -> None:
        """Every process of the node killed at once: its keeper's group, its postmaster and every
        child of it. The postmaster's shared memory segment is removed as it would have."""
        shm = None
        try:
            lines = (node.pgdata / "postmaster.pid").read_text().split("\n")
            shm = lines[6].split()[1] if len(lines) > 6 and len(lines[6].split()) == 2 else None
        except OSError:
            pass
        victims = [p for p in (node.postmaster(), *node.backends()) if p]
        if node.keeper is not None:
            _killpg(node.keeper.pid, signal.SIGKILL)
        for pid in victims:
            _kill(pid, signal.SIGKILL)
        if node.keeper is not None:
            node.keeper.wait(30)
        for pid in victims:
            _wait_gone(pid, 30)
        if shm is not None:
            subprocess.run(["ipcrm", "-m", shm], capture_output=True)

    def shutdown(self, node: Node, timeout: float = 60) -> bool:
        """Stop a node as an operator does (`pg_autoctl stop`: a fast shutdown). False when it did
        not finish within `timeout` (the hang a session-lived temporary table caused)."""
        pm = node.postmaster()
        if node.keeper is None or node.keeper.poll() is not None:
            if pm is None:
                return True
            _kill(pm, signal.SIGINT)  # fast shutdown, as pg_ctl stop -m fast
        else:
            try:
                self.autoctl("stop", "--pgdata", str(node.pgdata), timeout=timeout)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        stopped = (pm is None or _wait_gone(pm, timeout)) and (node.keeper is None or _wait_exit(node.keeper, 10))
        return stopped

    def stop(self) -> dict[str, bool]:
        """Every node shut down; {node: whether its fast shutdown finished}. Whatever did not is
        then stopped at once (SIGQUIT to its postmaster), so that nothing is leaked."""
        clean = {}
        for node in [*self.nodes, self.monitor]:
            clean[node.name] = self.shutdown(node)
            if node.keeper is not None and node.keeper.poll() is None:
                _killpg(node.keeper.pid, signal.SIGKILL)
                node.keeper.wait(30)
            pm = node.postmaster()
            if pm is not None and _alive(pm):
                _kill(pm, signal.SIGQUIT)
                _wait_gone(pm, 30)
        return clean


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False
