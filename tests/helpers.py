"""What the tests need to drive real workers and read what they did."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import orjson
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import KafkaTimeoutError
from psycopg_pool import AsyncConnectionPool

from schemas.deadletter import DeadLetterInfo
from sinks.core.sink import RowWriter
from sinks.pool import open_pool
from streams import aio
from streams.dev.embedded import free_port
from streams.kinds import Kind, by_name
from streams.settings import Settings
from streams.tools.expected import Counters, Expected, read_expected
from streams.tools.reader import Reader, read_all

# Whether tests may run the workers as the admin role where the least-privilege roles are unusable
# (a managed server without them): then the tests of the roles skip, rather than the run failing.
ADMIN_ALLOWED = os.environ.get("EVENTSINK_TESTS_ALLOW_ADMIN") == "1"


def roles_required(writer_url: str, database_url: str) -> None:
    """Skip a test of the roles where they are unusable and that is allowed; otherwise (the
    `writer_url` fixture fails first) it runs."""
    if writer_url == database_url and ADMIN_ALLOWED:
        pytest.skip("the roles are not available on this server (EVENTSINK_TESTS_ALLOW_ADMIN=1)")


def eventsink(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180, text: bool = True
) -> subprocess.CompletedProcess[Any]:
    """`eventsink ARGS` as a real process, as an operator runs it: stdin closed, stdout and stderr
    captured, JSON logs. `env` adds to (or, with the os environment in it, is) its environment."""
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env={**os.environ, "EVENTSINK_LOG_FORMAT": "json", **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=text,
        timeout=timeout,
    )


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Scenario:
    """One test's names: its own topic, consumer group and tenants, so tests never collide."""

    bootstrap: str
    dsn: str  # the tests' own connection (owner of everything)
    data_dir: Path
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    worker_dsn: str = ""  # what workers and commands connect as (the writer role)

    @property
    def topic(self) -> str:
        return f"metrics-{self.name}"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"

    @property
    def chat_topic(self) -> str:
        return f"chat-{self.name}"

    @property
    def analysis_topic(self) -> str:
        return f"analysis-{self.name}"

    @property
    def group(self) -> str:
        return f"eventsink-{self.name}"

    def kind(self, name: str) -> Kind:
        """Event kind `name` (metric, chat, analysis) on this scenario's topics."""
        settings = Settings(
            kafka_bootstrap_servers=self.bootstrap,
            database_url=self.dsn,
            metrics_topic=self.topic,
            chat_topic=self.chat_topic,
            analysis_topic=self.analysis_topic,
            group_id=self.group,
        )
        return by_name(settings, name)

    def cli(
        self, *args: str, dsn: str | None = None, timeout: float = 180, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        """`eventsink ARGS` against this scenario's broker, topics and database (`dsn`: another)."""
        return eventsink(*args, env=self.env(dsn, **extra), timeout=timeout)

    def env(self, dsn: str | None = None, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "DATABASE_URL": dsn or self.worker_dsn or self.dsn,
            "EVENTSINK_GROUP_ID": self.group,
            "EVENTSINK_METRICS_TOPIC": self.topic,
            "EVENTSINK_CHAT_TOPIC": self.chat_topic,
            "EVENTSINK_ANALYSIS_TOPIC": self.analysis_topic,
            "EVENTSINK_TOPIC_PARTITIONS": "4",
            "EVENTSINK_SESSION_TIMEOUT_MS": "6000",
            "EVENTSINK_BATCH_MAX_WAIT_MS": "200",
            "EVENTSINK_RETRY_MAX_S": "1",
            "EVENTSINK_DB_CONNECT_TIMEOUT_S": "3",
            "EVENTSINK_DATA_DIR": str(self.data_dir / self.name),
            "EVENTSINK_LOG_FORMAT": "json",
            "EVENTSINK_LOG_LEVEL": "INFO",
            # Two in a row: `worker --processes 2` listens on this one and the next.
            "EVENTSINK_WEB_PORT": str(free_port(2)),
        }
        env.update(extra)
        return env


class WorkerProcess:
    """`eventsink worker` as a real process, with its JSON log kept for assertions."""

    # Every one started, so that a test failing half-way leaves no orphan (see conftest).
    started: ClassVar[list[WorkerProcess]] = []

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        WorkerProcess.started.append(self)

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait: the worker drains and exits on its own."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"worker did not stop within {timeout}s after SIGTERM") from None
        crashes = [e for e in self.logs() if e.get("event") == "batch task crashed"]
        assert not crashes, f"a batch task crashed: {crashes[0].get('exception', '')[-1500:]}"
        return int(self.proc.returncode)

    def logs(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                entries.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                entries.append({"event": line.decode("utf-8", "replace"), "level": "raw"})
        return entries

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.env['EVENTSINK_WEB_PORT']}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def assigned(self, topic: str) -> list[list[int]]:
        """The partitions of `topic` at each assignment it logged, oldest first."""
        entries = self.logs()
        return [e["partitions"] for e in entries if e.get("event") == "partitions assigned" and e.get("topic") == topic]

    def generations(self, topic: str) -> list[tuple[int, list[int]]]:
        """(group generation, partitions of `topic`) at each assignment it logged, oldest first."""
        entries = self.logs()
        return [
            (e["generation"], e["partitions"])
            for e in entries
            if e.get("event") == "partitions assigned" and e.get("topic") == topic
        ]

    def led(self) -> list[int]:
        """The group generations in which this worker, as the group's leader, assigned partitions."""
        return [e["generation"] for e in self.logs() if e.get("event") == "group assigned as its leader"]

    def logged(self, event: str) -> int:
        """How many times the worker logged `event`."""
        return sum(1 for e in self.logs() if e.get("event") == event)


def shared_by(topic: str, *workers: WorkerProcess) -> bool:
    """Whether the workers' latest assignments, all of one generation (one rebalance every one of
    them has finished), split the topic's four partitions between them. Latest assignments of
    different generations can add up to four partitions while a worker is still in a rebalance."""
    latest = [(w.generations(topic) or [(-1, [])])[-1] for w in workers]  # each log read once
    return (
        len({generation for generation, _ in latest}) == 1
        and all(partitions for _, partitions in latest)
        and sorted(p for _, partitions in latest for p in partitions) == [0, 1, 2, 3]
    )


def leader(topic: str, *workers: WorkerProcess) -> WorkerProcess:
    """The one of `workers` that, as the group's leader, assigned the generation they share (see
    `shared_by`). Tansu 0.6.0 never completes a rebalance again once its leader left while the
    group re-formed, so a test that stops one worker of a running group stops one that does not lead."""
    generation = workers[0].generations(topic)[-1][0]
    leaders = [w for w in workers if generation in w.led()]
    assert len(leaders) == 1, f"one leader of generation {generation}, not {len(leaders)}"
    return leaders[0]


COUNTERS = tuple(f.name for f in fields(Counters))  # events, rows_applied, duplicates, dead_letters, superseded


@asynccontextmanager
async def writers_pool(dsn: str, *writers: RowWriter, **options: Any) -> AsyncIterator[AsyncConnectionPool]:
    """A pool (`sinks.pool.open_pool` with `options`) whose connections have the writers' staging
    tables, opened and waited for, closed when the block ends."""
    pool = open_pool(dsn, stage_ddl=[ddl for w in writers for ddl in w.stage_ddl], **options)
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


def ledger(dsn: str, group: str, topic: str) -> dict[int, dict[str, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT partition, last_offset, {', '.join(COUNTERS)} "
            "FROM eventsink.offsets_ledger WHERE consumer_group = %s AND topic = %s",
            (group, topic),
        ).fetchall()
    keys = ("last_offset", *COUNTERS)
    return {r[0]: dict(zip(keys, r[1:], strict=True)) for r in rows}


def ledger_totals(dsn: str, group: str, topic: str) -> dict[str, int]:
    """The ledger's counters of a topic, summed over its partitions: the keys of `Counters`."""
    rows = ledger(dsn, group, topic).values()
    return {k: sum(r[k] for r in rows) for k in COUNTERS}


def expected(s: Scenario, kind: str) -> Expected:
    """What the database must hold for the scenario's topic of `kind`, from its records and its
    DLQ's (`streams.tools.expected`, the oracle `eventsink verify` and the benchmark use too)."""

    async def go() -> Expected:
        async with Reader(s.bootstrap) as reader:
            return await read_expected(reader, s.kind(kind))

    for _ in range(ORACLE_READS - 1):
        try:
            return aio.run(go())
        except KafkaTimeoutError as exc:
            # The broker did not answer an offsets request within the client's 40 s, seen on a
            # CI host running eight test processes on two cores. The topics are what they are:
            # reading them again reads the same records, and the comparison is unchanged.
            print(f"the oracle's read of {s.kind(kind).topic} timed out ({exc}); reading again", file=sys.stderr)
    return aio.run(go())


ORACLE_READS = 3  # attempts of `expected` to read a topic whose broker timed out


def wait_applied(dsn: str, group: str, topic: str, last_offsets: dict[int, int], timeout: float = 90) -> None:
    """Until the ledger covers every offset produced (producer-side offsets: exact)."""

    def done() -> bool:
        led = ledger(dsn, group, topic)
        return all(led.get(p, {}).get("last_offset", -1) >= o for p, o in last_offsets.items())

    wait_until(done, timeout, what=f"ledger to reach {last_offsets}")


def metric_rows(dsn: str, tenants: Iterable[str]) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT tenant_id::text, dedupe_id, value, occurred_at, kafka_partition, kafka_offset "
            "FROM eventsink.metrics_raw WHERE tenant_id = ANY(%s::uuid[])",
            (list(tenants),),
        ).fetchall()


def count_by_tenant(dsn: str, tenants: Iterable[str]) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(
            conn.execute(
                "SELECT tenant_id::text, count(*) FROM eventsink.metrics_raw "
                "WHERE tenant_id = ANY(%s::uuid[]) GROUP BY 1",
                (list(tenants),),
            ).fetchall()
        )


@dataclass
class TopicRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: int = 0  # milliseconds since the epoch

    @property
    def info(self) -> DeadLetterInfo:
        return DeadLetterInfo.from_headers(self.headers)


async def read_topic(bootstrap: str, topic: str) -> list[TopicRecord]:
    """Every record of a topic, without a consumer group ([] if the topic does not exist).

    Caught up once past the end offsets seen at the start (`Reader.read`: ReadStalled when
    nothing moves for its stall limit before that).
    """
    try:
        records = await read_all(bootstrap, topic)
    except LookupError:
        return []
    return [TopicRecord(r.partition, r.offset, r.key, r.value, list(r.headers or ()), r.timestamp) for r in records]


class _AsFaust(RoundRobinPartitionAssignor):
    # Some brokers (Tansu) keep a group's protocol after its members left: joining with
    # another one would lock the workers out (InconsistentGroupProtocol).
    name = "faust"


async def commit_group_offsets(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit offsets for a consumer group as a member of it, as a worker's Faust would.

    The one consumer of the tests that joins a group, on purpose; `committed_offsets` (through
    the group-less reader) confirms what it committed.
    """
    from aiokafka.structs import OffsetAndMetadata

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        partition_assignment_strategy=(_AsFaust,),
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 60
        while len(consumer.assignment()) < len(offsets):
            if time.monotonic() > deadline:
                raise AssertionError(f"not assigned {topic} in group {group}")
            await consumer.getmany(timeout_ms=200, max_records=1)
        await consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, "") for p, o in offsets.items()})
    finally:
        await consumer.stop()
    committed = await committed_offsets(bootstrap, group, topic, offsets)
    assert committed == offsets, f"committed {committed}, not {offsets}"


async def committed_offsets(bootstrap: str, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int | None]:
    """partition -> the group's committed offset (None where it has none), without joining it."""
    async with Reader(bootstrap) as reader:
        return await reader.committed(group, topic, partitions)
