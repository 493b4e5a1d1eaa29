"""The `eventsink` command as users run it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sinks.dsn import redact_dsn
from streams.dev.embedded import free_port, port_free
from streams.settings import Settings
from streams.tools.reader import Reader
from tests.helpers import Scenario, WorkerProcess, eventsink, read_topic, wait_applied, wait_until
from tests.workload import create_topics

PASSWORD = "pw-" + uuid.uuid4().hex


def with_password(dsn: str, port: int | None = None) -> str:
    params = conninfo_to_dict(dsn)
    params["password"] = PASSWORD
    if port is not None:
        params.update(host="127.0.0.1", port=str(port))
    return make_conninfo(**params)


def test_migrate_reports_without_showing_the_password(database_url: str) -> None:
    done = eventsink("migrate", env={"DATABASE_URL": with_password(database_url)})
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stderr and "password=***" in done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    status = eventsink("migrate", "--status", env={"DATABASE_URL": database_url})
    assert "offsets_ledger" in status.stdout and "metrics_raw" in status.stdout


def test_an_unreachable_database_is_a_clear_error_without_the_password(database_url: str) -> None:
    done = eventsink("migrate", env={"DATABASE_URL": with_password(database_url, free_port())})
    assert done.returncode == 1
    assert "error:" in done.stderr and "Connection refused" in done.stderr.replace("\n", " ")
    assert PASSWORD not in done.stdout + done.stderr


def test_help_and_invalid_settings_never_show_the_password(database_url: str) -> None:
    env = {"DATABASE_URL": with_password(database_url), "EVENTSINK_BATCH_SIZE": "zero"}
    bad = eventsink("migrate", env=env)
    assert bad.returncode == 2 and "EVENTSINK_BATCH_SIZE" in bad.stderr
    assert PASSWORD not in bad.stdout + bad.stderr
    helped = eventsink("--help", env=env)
    assert helped.returncode == 0 and "produce" in helped.stdout and PASSWORD not in helped.stdout


def test_invalid_settings_are_a_usage_error_naming_the_variable_on_one_line(database_url: str) -> None:
    for command in (["migrate", "--status"], ["worker"], ["lag"]):
        done = eventsink(*command, env={"DATABASE_URL": database_url, "EVENTSINK_ENV": "prod"})
        assert done.returncode == 2, (command, done.stderr)
        assert done.stderr.strip().splitlines() == [
            "error: invalid settings: EVENTSINK_ENV must be one of development, production"
        ]


def test_a_misspelt_variable_is_warned_about_once_with_the_closest_name(database_url: str) -> None:
    env = {"DATABASE_URL": database_url, "EVENTSINK_BACTH_SIZE": "10"}
    for command in (["migrate", "--status"], ["schema", "export", "--check"], ["produce", "chat", "--help"]):
        done = eventsink(*command, env=env)
        assert done.returncode == 0, (command, done.stderr)
        warnings = [orjson.loads(line) for line in done.stderr.splitlines() if "EVENTSINK_BACTH_SIZE" in line]
        assert len(warnings) == 1, (command, done.stderr)
        assert warnings[0]["level"] == "warning" and warnings[0]["did_you_mean"] == "EVENTSINK_BATCH_SIZE"


def test_produce_reports_what_it_sent(scenario: Scenario) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": scenario.bootstrap, "EVENTSINK_METRICS_TOPIC": scenario.topic}
    done = eventsink(
        "produce",
        "metrics",
        "--count",
        "500",
        "--tenants",
        "3",
        "--duplicates",
        "0.2",
        "--invalid",
        "0.02",
        "--seed",
        "3",
        "--json",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["sent"] == 500 == report["unique"] + report["duplicates"] + report["invalid"]
    assert len(report["unique_per_tenant"]) == 3 and report["invalid"] > 0


@pytest.mark.e2e
def test_run_starts_a_broker_runs_a_worker_and_stops_everything(scenario: Scenario) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "EVENTSINK_GROUP_ID")}
    env.update(DATABASE_URL=scenario.dsn, EVENTSINK_LOG_FORMAT="json")
    env.pop("EVENTSINK_WEB_PORT", None)
    # Twice on one database: the second broker's topics are new, the first run's ledger stays.
    logs: list[Path] = []
    for _ in range(2):
        with contextlib.ExitStack() as taken:
            # A worker already running on this host holds the default web port: the demo goes on.
            if port_free(Settings.model_fields["web_port"].default):
                blocker = taken.enter_context(socket.socket())
                blocker.bind(("0.0.0.0", Settings.model_fields["web_port"].default))
                blocker.listen()
            done = subprocess.run(
                [sys.executable, "-m", "streams.cli", "run", "--count", "2000"],
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
                cwd=scenario.data_dir,
            )
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        web = int(re.search(r"http://127\.0\.0\.1:(\d+)/metrics", out).group(1))  # type: ignore[union-attr]
        assert web != Settings.model_fields["web_port"].default
        assert "exactly once: every unique event applied once, every invalid one in its DLQ" in out
        port = int(re.search(r"Tansu broker \(in memory\) on 127\.0\.0\.1:(\d+)", out).group(1))  # type: ignore[union-attr]
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        leftover = subprocess.run(["pgrep", "-f", f"{port}"], capture_output=True, text=True)
        assert leftover.stdout.strip() == ""
        # It says which group it ran as, and how the other commands find it: they read its ledger.
        exported = exports(done.stderr)
        assert exported["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{port}"
        assert exported["DATABASE_URL"] == redact_dsn(scenario.dsn)
        group = exported["EVENTSINK_GROUP_ID"]
        assert group.startswith("eventsink-run-") and f"consumer group {group}" in done.stderr
        shown = eventsink("ledger", "show", "--json", env=exported)
        assert shown.returncode == 0, shown.stderr
        assert sum(orjson.loads(line)["events"] for line in shown.stdout.splitlines()) == sent_records(out)
        # Each run logs to a file of its own, readable by this user only, and says where.
        logs.append(Path(scenario.data_dir) / re.search(r"logs in (\S+worker\.log)", out).group(1))  # type: ignore[union-attr]
    assert len(set(logs)) == 2 and all(log.stat().st_size > 0 for log in logs)
    assert all(stat.S_IMODE(log.stat().st_mode) == 0o600 for log in logs)


def exports(text: str) -> dict[str, str]:
    """The variables of the `export NAME=value` lines `eventsink run` printed."""
    return {m[1]: shlex.split(m[2])[0] for m in re.finditer(r"^export (\w+)=(.*)$", text, re.M)}


def sent_records(text: str) -> int:
    return int(re.search(r"(\d+) records published", text).group(1))  # type: ignore[union-attr]


@pytest.mark.e2e
def test_run_keep_running_shows_its_group_and_outlives_its_worker(scenario: Scenario, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "EVENTSINK_GROUP_ID")}
    env.update(DATABASE_URL=scenario.dsn, EVENTSINK_WEB_PORT=str(free_port()))
    err = tmp_path / "run.err"
    running = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "run", "--count", "300", "--keep-running"],
        env={**env, "EVENTSINK_LOG_FORMAT": "json"},
        stdin=subprocess.DEVNULL,
        stdout=(tmp_path / "run.out").open("wb"),
        stderr=err.open("wb"),
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        wait_until(lambda: "worker still running" in err.read_text(), 240, what="the summary")
        text = err.read_text()
        exported = exports(text)
        host, port = exported["KAFKA_BOOTSTRAP_SERVERS"].split(":")
        lag = eventsink("lag", "--json", env=exported)
        assert lag.returncode == 0, lag.stderr
        report = orjson.loads(lag.stdout)
        assert report["group"] == exported["EVENTSINK_GROUP_ID"] != "eventsink"
        # The run's group, caught up: every partition applied (group `eventsink` would read 0 everywhere).
        assert report["total"]["ledger_lag"] == 0 and sum(r["applied"] for r in report["partitions"]) > 0
        shown = eventsink("ledger", "show", "--json", env=exported)
        assert sum(orjson.loads(line)["events"] for line in shown.stdout.splitlines()) == sent_records(text)

        # Its worker killed: the broker stays up for a worker started by hand.
        os.kill(int(re.search(r"worker started \(pid (\d+)", text).group(1)), signal.SIGKILL)  # type: ignore[union-attr]
        wait_until(lambda: "the broker and the database stay up" in err.read_text(), 60, what="the worker's exit noted")
        socket.create_connection((host, int(port)), timeout=5).close()
        assert running.poll() is None
        assert interrupted(running) == 130, err.read_text()[-2000:]
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert "interrupted:" in err.read_text() and "records applied by group eventsink-run-" in err.read_text()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()


def test_chat_history_prints_the_last_messages_in_order_to_their_tenant_only(database_url: str) -> None:
    import asyncio
    from datetime import UTC, datetime, timedelta

    from schemas.chat import ChatEvent
    from sinks.core.batch import Batch, Record
    from sinks.core.sink import Sink
    from sinks.pool import open_pool
    from sinks.writers.chat import ChatWriter

    tenant, conv = uuid.uuid4(), uuid.uuid4()
    t0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
    events = [
        ChatEvent.model_construct(
            tenant_id=tenant,
            dedupe_id=f"h{i}",
            conversation_id=conv,
            role="user" if i % 2 == 0 else "assistant",
            content=f"turn {i}",
            occurred_at=t0 + timedelta(minutes=i),
            user_id="u",
            model=None,
            prompt_tokens=None,
            completion_tokens=None,
        )
        for i in range(6)
    ]

    async def write() -> None:
        pool = open_pool(database_url, stage_ddl=ChatWriter.stage_ddl)
        await pool.open(wait=True)
        try:
            records = [Record(i, e, None, b"{}") for i, e in enumerate(events)]
            await Sink(pool, "g-history", ChatWriter()).write(Batch(f"chat-{conv}", 0, 0, 5, records))
        finally:
            await pool.close()

    asyncio.run(write())
    env = {"DATABASE_URL": database_url}
    shown = eventsink("chat", "history", str(conv), "--tenant", str(tenant), "--last", "3", "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert [orjson.loads(line)["content"] for line in shown.stdout.splitlines()] == ["turn 3", "turn 4", "turn 5"]
    table = eventsink("chat", "history", str(conv), "--tenant", str(tenant), env=env)
    assert table.returncode == 0 and "6 messages" in table.stdout and "turn 0" in table.stdout
    other = eventsink("chat", "history", str(conv), "--tenant", str(uuid.uuid4()), env=env)
    assert other.returncode == 1 and "not found" in other.stderr and "turn" not in other.stdout


def test_a_worker_whose_web_port_is_taken_says_so(database_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = eventsink("worker", env={"DATABASE_URL": database_url, "EVENTSINK_WEB_PORT": str(port)}, timeout=60)
    assert done.returncode == 2
    assert "the web port is taken" in done.stdout + done.stderr and "EVENTSINK_WEB_PORT" in done.stdout + done.stderr


def end_offsets(s: Scenario) -> dict[int, int]:
    async def read() -> dict[int, int]:
        async with Reader(s.bootstrap) as reader:
            return await reader.end_offsets(s.topic)

    return asyncio.run(read())


def started(args: list[str], env: dict[str, str], out: Path, err: Path) -> subprocess.Popen[bytes]:
    """`eventsink ARGS` running, its stdout and stderr in files the test reads as they grow."""
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", *args],
        env={**env, "EVENTSINK_LOG_FORMAT": "json"},
        stdin=subprocess.DEVNULL,
        stdout=out.open("wb"),
        stderr=err.open("wb"),
        start_new_session=True,
    )


def interrupted(proc: subprocess.Popen[bytes], timeout: float = 90) -> int:
    """Ctrl-C (SIGINT), then its exit status."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{proc.args[3:5]} did not stop within {timeout}s of SIGINT") from None


@pytest.mark.e2e
def test_ctrl_c_exits_130_and_says_what_was_done(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    create_topics(s)
    env = s.env()

    # produce: what it sent before it was stopped is what the topic holds.
    producing = started(
        ["produce", "metrics", "--count", "1000000", "--rate", "400", "--json"],
        env,
        tmp_path / "produce.out",
        tmp_path / "produce.err",
    )
    wait_until(lambda: sum(end_offsets(s).values()) >= 200, 90, what="records sent")
    assert interrupted(producing) == 130, (tmp_path / "produce.err").read_text()
    report = orjson.loads((tmp_path / "produce.out").read_text())
    assert report["interrupted"] is True and 0 < report["acknowledged"] <= report["sent"] < 1_000_000
    assert report["sent"] == report["unique"] + report["duplicates"] + report["invalid"]
    assert len(asyncio.run(read_topic(s.bootstrap, s.topic))) == report["sent"]
    assert "interrupted" in (tmp_path / "produce.err").read_text()

    # tail --follow: Ctrl-C is how it ends; it says how many records it showed.
    tailing = started(
        ["tail", s.topic, "--from-beginning", "--follow", "--format", "json"],
        env,
        tmp_path / "tail.out",
        tmp_path / "tail.err",
    )
    wait_until(lambda: "following new records" in (tmp_path / "tail.err").read_text(), 90, what="the backlog shown")
    assert interrupted(tailing) == 130, (tmp_path / "tail.err").read_text()
    shown = len((tmp_path / "tail.out").read_text().splitlines())
    assert shown == report["sent"]
    assert f"stopped after {shown} records of {s.topic}" in (tmp_path / "tail.err").read_text()

    # worker: drains, logs what it applied, exits 130.
    w = WorkerProcess(env, tmp_path / "worker.log").start()
    wait_until(lambda: w.logged("worker ready"), 90, what="the worker ready")
    wait_applied(s.dsn, s.group, s.topic, dict.fromkeys(range(4), -1))  # nothing to wait for but the ledger
    assert w.proc is not None and interrupted(w.proc) == 130
    assert w.logged("drained") >= 1

    # worker --processes: its children drain on the signal it forwards; it exits 130 too.
    supervised = started(["worker", "--processes", "2"], env, tmp_path / "sup.out", tmp_path / "sup.err")
    wait_until(lambda: (tmp_path / "sup.err").read_text().count('"worker ready"') == 2, 90, what="both ready")
    assert interrupted(supervised) == 130, (tmp_path / "sup.err").read_text()[-2000:]
    assert "worker processes stopped" in (tmp_path / "sup.err").read_text()


def test_a_database_never_migrated_is_named_with_what_to_do(pg_admin_dsn: str) -> None:
    """`lag`, `ledger show` and `verify` against a database without eventsink's tables (a new one,
    or DATABASE_URL naming the wrong one) said only `UndefinedTable: relation ... does not exist`."""
    from sinks.dsn import database_of, with_database
    from streams.dev import embedded

    name = f"eventsink_unmigrated_{uuid.uuid4().hex[:8]}"
    admin = with_database(pg_admin_dsn, database_of(pg_admin_dsn))
    dsn = embedded.ensure_database(admin, name)
    try:
        for command in (["lag"], ["ledger", "show"]):
            done = eventsink(*command, env={"DATABASE_URL": with_password(dsn)})
            assert done.returncode == 1, (command, done.stderr)
            (line,) = done.stderr.strip().splitlines()
            assert f"/{name} has no eventsink tables" in line and "`eventsink migrate`" in line, line
            assert PASSWORD not in line
    finally:
        embedded.drop_database(admin, name)


def test_usage_errors_that_were_crashes_or_runaways_exit_2_on_one_line(database_url: str) -> None:
    """`worker --processes 999` started 999 workers on 2 cores (the machine ran out of memory);
    `produce chat --turns 8 2` raised ValueError; an empty DATABASE_URL picked libpq's defaults."""
    env = {"DATABASE_URL": database_url}
    cases = {
        ("worker", "--processes", "999"): "999 is not in the range 1<=x<=",
        ("produce", "chat", "--turns", "8", "2"): "MIN 8 is above MAX 2",
    }
    for args, said in cases.items():
        done = eventsink(*args, env=env, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        (line,) = done.stderr.strip().splitlines()
        assert said in line, line
    empty = eventsink("migrate", "--status", env={"DATABASE_URL": ""})
    assert empty.returncode == 2 and "DATABASE_URL is empty" in empty.stderr
