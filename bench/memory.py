"""The memory scenario: a backlog of 64 KiB chat messages, a slow database, one worker's peak RSS.

Issue 12: memory bounded in bytes, not in records. A worker's buffers were bounded by record
counts (1,000-record batches per partition, Faust's stream buffer), so a backlog of 64 KiB
messages could fill gigabytes; the worker now weighs every fetched record until it is applied
and fetches no more while it holds over EVENTSINK_BUFFER_MAX_BYTES (streams/worker/budget.py).
Target: peak RSS under 400 MB with such messages and a database 10x slower than usual.

One chat topic is loaded with `events` records whose content is `content_bytes` each (just under
the 64 KiB limit, `EVENTSINK_CHAT_MAX_CONTENT_BYTES`), re-sends included, then read back once for
the keys of every record. Then one `eventsink worker` (EVENTSINK_KINDS=chat) reads it from the
earliest offset, on a fresh database and consumer group, in each of `runs()`:

- `direct`: the database as it is, the default budget: the usual rate;
- `slow`: through a TCP proxy (tests/proxy.py) delaying each chunk it forwards, either way, by
  `delay_s`: the same database, about 10x slower (the report gives both rates);
- `slow, small budget`: the same with EVENTSINK_BUFFER_MAX_BYTES=16 MiB: the knob works.

A run lasts until the ledger counts every record or `seconds` have passed since the spawn. Every
`POLL_S` the ledger is read and the worker's RSS sampled (psutil, bench.measure.Spawned); its
kernel high-water mark (VmHWM) is read just before SIGTERM; peak RSS is the larger. The rate is
the ledger's events counted between the first and the last poll that saw a commit, per second.
A run cut short is checked on the prefix it applied (bench/verify_memory.py), not by the full
oracle.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.contenders import Context, environment, free_port
from bench.measure import LedgerProbe, Plan, Spawned
from bench.mixed import CHAT_TURNS
from bench.revision import migrations
from bench.services import Services, fresh_database
from bench.session import say
from bench.verify_memory import KeyOf, PrefixCheck, verify_prefix
from bench.workload import source_specs
from schemas.chat import MAX_CONTENT_BYTES
from streams import aio
from streams.dev.loadgen.chat import ChatLoad, ChatReport, produce_chat
from streams.publish.publisher import Publisher
from streams.settings import Settings
from streams.tools.reader import Reader
from streams.tools.topics import ensure_topics
from tests.proxy import TcpProxy

DEFAULT_EVENTS = 12_000  # about 780 MB of values; Tansu holds them in memory
CONTENT_BYTES = MAX_CONTENT_BYTES - 536  # just under the limit (65,000 bytes)
DEFAULT_DELAY_MS = 100.0
DEFAULT_SECONDS = 90.0
SMALL_BUDGET = 16 * 1024 * 1024
MAX_BACKLOG_BYTES = 4 * 10**9  # what we let Tansu (in memory) and the database hold
RSS_TARGET_MB = 400
POLL_S = 0.25
LEDGER = """
    SELECT coalesce(sum(events), 0), coalesce(sum(rows_applied), 0)
    FROM eventsink.offsets_ledger WHERE consumer_group = %s AND topic = %s
"""
# bench.run's contender names for this scenario (--only): one worker, its runs below.
CONTENDERS = {"eventsink": "one `eventsink worker` process, EVENTSINK_KINDS=chat"}


def default_budget() -> int:
    """The worker's EVENTSINK_BUFFER_MAX_BYTES: inherited from our environment, else its default."""
    inherited = os.environ.get("EVENTSINK_BUFFER_MAX_BYTES")
    return int(inherited) if inherited else int(Settings.model_fields["buffer_max_bytes"].default)


@dataclass(frozen=True)
class MemorySpec:
    events: int  # records to load (about: whole conversations are sent)
    partitions: int
    tenants: int
    duplicates: float
    seed: int
    content_bytes: int = CONTENT_BYTES  # of every message
    delay_s: float = DEFAULT_DELAY_MS / 1000  # the proxy's, per chunk forwarded, each way
    seconds: float = DEFAULT_SECONDS  # the longest a run lasts, from the spawn

    def conversations(self) -> int:
        per_conversation = sum(CHAT_TURNS) / 2 / (1 - self.duplicates)
        return max(1, round(self.events / per_conversation))


@dataclass(frozen=True)
class ChatBacklog:
    spec: MemorySpec
    topic: str
    report: ChatReport
    keys: dict[int, list[KeyOf]]  # per partition, every record's key in offset order
    value_bytes: int  # of every record together
    load_seconds: float

    @property
    def topics(self) -> dict[str, str]:
        """The topic of each event kind (EVENTSINK_KINDS): chat only."""
        return {"chat": self.topic}

    @property
    def sent_per_topic(self) -> dict[str, int]:
        return {self.topic: self.sent}

    @property
    def sent(self) -> int:
        return self.report.sent


async def _read_keys(bootstrap: str, topic: str) -> tuple[dict[int, list[KeyOf]], int]:
    """Every record's (offset, tenant_id, dedupe_id, conversation_id) per partition, and the
    bytes of all values; the values themselves are let go."""
    keys: dict[int, list[KeyOf]] = {}
    value_bytes = 0
    async with Reader(bootstrap) as reader:
        async for chunk in reader.read(topic):
            for r in chunk:
                body = orjson.loads(r.value)
                keys.setdefault(r.partition, []).append(
                    KeyOf(r.offset, body["tenant_id"], body["dedupe_id"], body["conversation_id"])
                )
                value_bytes += len(r.value)
    for found in keys.values():
        found.sort()
    return keys, value_bytes


async def _load(bootstrap: str, topic: str, spec: MemorySpec) -> ChatBacklog:
    await ensure_topics([bootstrap], source_specs(topic, spec.partitions))
    async with Publisher([bootstrap]) as publisher:
        load = ChatLoad(
            conversations=spec.conversations(),
            tenants=spec.tenants,
            min_turns=CHAT_TURNS[0],
            max_turns=CHAT_TURNS[1],
            duplicates=spec.duplicates,
            seed=spec.seed,
            content_bytes=spec.content_bytes,
        )
        report = await produce_chat(publisher, topic, load)
    keys, value_bytes = await _read_keys(bootstrap, topic)
    read = sum(len(k) for k in keys.values())
    if read != report.sent:
        raise RuntimeError(f"{topic}: {report.sent} records sent, {read} read back")
    return ChatBacklog(spec, topic, report, keys, value_bytes, report.seconds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """bench.run's options of this scenario (--events, --partitions, --tenants, --duplicates and
    --seed are every scenario's)."""
    m = parser.add_argument_group("memory scenario")
    m.add_argument(
        "--content-bytes",
        type=int,
        default=CONTENT_BYTES,
        help="of every chat message (above 65,536 they are dead letters)",
    )
    m.add_argument(
        "--db-delay-ms",
        type=float,
        default=DEFAULT_DELAY_MS,
        help="the slow database: the proxy's delay per chunk forwarded, either way",
    )
    m.add_argument("--memory-seconds", type=float, default=DEFAULT_SECONDS, help="the longest a worker runs, per run")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, events: int) -> None:
    """Refuse a backlog that would not fit: --events is every scenario's, 200,000 metric events
    are 64 KiB chat messages here."""
    size = events * args.content_bytes
    if size > MAX_BACKLOG_BYTES:
        parser.error(
            f"the memory scenario would load {events:,} messages of {args.content_bytes:,} bytes, "
            f"{size / 1e9:.0f} GB, which the broker holds in memory: run it on its own (--scenario memory) "
            f"with fewer --events (default {DEFAULT_EVENTS:,})"
        )


def spec_from(args: argparse.Namespace, events: int) -> MemorySpec:
    return MemorySpec(
        events,
        args.partitions,
        args.tenants,
        args.duplicates,
        args.seed,
        args.content_bytes,
        args.db_delay_ms / 1000,
        args.memory_seconds,
    )


def load(bootstrap: str, topic: str, spec: MemorySpec) -> ChatBacklog:
    return aio.run(_load(bootstrap, topic, spec))


@dataclass(frozen=True)
class RunSpec:
    name: str
    budget_bytes: int  # EVENTSINK_BUFFER_MAX_BYTES
    delay_s: float  # 0: no proxy


def runs(spec: MemorySpec) -> list[RunSpec]:
    budget = default_budget()
    return [
        RunSpec("direct", budget, 0.0),
        RunSpec("slow", budget, spec.delay_s),
        RunSpec("slow, small budget", min(SMALL_BUDGET, budget), spec.delay_s),
    ]


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the spawn
    rss_mb: float  # the worker's resident set
    events: int  # the ledger's, all partitions
    rows: int


@dataclass(frozen=True)
class MemoryRun:
    spec: RunSpec
    seconds: float = 0.0  # from the spawn to the last poll
    first_commit_s: float | None = None
    events: int = 0  # counted by the ledger at the last poll
    rate: float | None = None  # events/s between the first and the last poll that saw a commit
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    check: PrefixCheck | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.check is not None and self.check.ok

    @property
    def steady_rss_mb(self) -> float | None:
        """The median RSS over the second half of the run: where the budget keeps it."""
        half = sorted(s.rss_mb for s in self.samples[len(self.samples) // 2 :])
        return half[len(half) // 2] if half else None


@dataclass(frozen=True)
class Results:
    backlog: ChatBacklog
    runs: list[MemoryRun]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.runs)

    def of(self, name: str) -> MemoryRun | None:
        return next((r for r in self.runs if r.spec.name == name), None)


def proxied(dsn: str, proxy: TcpProxy) -> str:
    """The same database, reached through the proxy."""
    return make_conninfo(**{**conninfo_to_dict(dsn), "host": "127.0.0.1", "port": str(proxy.port)})


@contextlib.contextmanager
def reached(dsn: str, delay_s: float) -> Iterator[str]:
    """`dsn` itself, or with a delay through a TCP proxy (running in this process) to it."""
    if not delay_s:
        yield dsn
        return
    params = conninfo_to_dict(dsn)
    with TcpProxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)) as proxy:
        proxy.set_delay(delay_s)
        yield proxied(dsn, proxy)


def _rate(samples: list[Sample]) -> tuple[float | None, float | None]:
    """(first commit s, events/s between the first and the last poll that saw a commit)."""
    committed = [s for s in samples if s.events > 0]
    if not committed:
        return None, None
    first = committed[0]
    last = next(s for s in committed if s.events == committed[-1].events)
    rate = (last.events - first.events) / (last.t - first.t) if last.t > first.t else None
    return first.t, rate


def _watch(spawned: Spawned, dsn: str, group: str, backlog: ChatBacklog, seconds: float) -> list[Sample]:
    """Poll until the ledger counts every record, `seconds` pass, or the worker exits."""
    samples: list[Sample] = []
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            events, rows = conn.execute(LEDGER, (group, backlog.topic)).fetchone()  # type: ignore[misc]
            rss = spawned.sample()
            now = time.perf_counter() - t0
            samples.append(Sample(now, rss / 2**20, int(events), int(rows)))
            if events >= backlog.sent or now > seconds or spawned.exited():
                return samples
            time.sleep(POLL_S)


def run_once(svc: Services, workdir: Path, src: Path, backlog: ChatBacklog, run: RunSpec, n: int) -> MemoryRun:
    slug = f"{n}-{'-'.join(run.name.replace(',', '').split())}"
    group = f"bench-memory-{slug}-{workdir.name}"
    logs = workdir / "memory"
    logs.mkdir(exist_ok=True)
    with fresh_database(svc.admin_dsn, f"bench_memory_{n}", migrations(src)) as dsn:
        with reached(dsn, run.delay_s) as worker_dsn:
            ctx = Context(svc.bootstrap, worker_dsn, backlog, group, workdir / group, src)
            env = {
                **environment(ctx),
                "EVENTSINK_BUFFER_MAX_BYTES": str(run.budget_bytes),
                "EVENTSINK_WEB_PORT": str(free_port()),
            }
            command = [sys.executable, "-m", "streams.cli", "worker"]
            plan = Plan([command], env, src, LedgerProbe(group, backlog.sent_per_topic), dsn)
            spawned = Spawned(command, plan, logs / f"{slug}.log", 0)
            try:
                samples = _watch(spawned, dsn, group, backlog, backlog.spec.seconds)
                peak = spawned.final_peak() / 2**20
                exited = spawned.exited()
            finally:
                spawned.stop()
        _timeline(logs / f"{slug}.csv", samples)
        # What the database holds once the worker has drained and left.
        check = None if exited else verify_prefix(dsn, group, backlog.topic, backlog.keys)
    first, rate = _rate(samples)
    return MemoryRun(
        run,
        seconds=samples[-1].t,
        first_commit_s=first,
        events=samples[-1].events,
        rate=rate,
        peak_rss_mb=peak,
        cpu_s=spawned.cpu_s,
        samples=samples,
        check=check,
        error=f"exited early ({spawned.log}):\n{spawned.tail()}" if exited else None,
    )


def _timeline(path: Path, samples: list[Sample]) -> None:
    with path.open("w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["t_s", "rss_mb", "ledger_events", "ledger_rows"])
        w.writerows([f"{s.t:.2f}", f"{s.rss_mb:.1f}", s.events, s.rows] for s in samples)


def describe(r: MemoryRun) -> str:
    if r.error:
        return f"FAILED: {r.error}"
    rate = "-" if r.rate is None else f"{r.rate:,.0f}"
    first = "-" if r.first_commit_s is None else f"{r.first_commit_s:.1f}s"
    return (
        f"{r.events:,} records in {r.seconds:.1f}s, {rate} events/s, first commit {first}, "
        f"peak RSS {r.peak_rss_mb:.0f} MB, CPU {r.cpu_s:.1f}s, check: {r.check.summary() if r.check else '-'}"
    )


def scenario(svc: Services, workdir: Path, src: Path, spec: MemorySpec) -> Results:
    """Load the chat backlog, then the worker in each of `runs(spec)`, one at a time."""
    backlog = load(svc.bootstrap, f"bench.memory.{workdir.name}.chat", spec)
    say(
        f"memory: loaded {backlog.sent:,} chat records of {spec.content_bytes:,}-byte content, "
        f"{backlog.value_bytes / 1e6:,.0f} MB in {backlog.load_seconds:.1f}s"
    )
    done = []
    for n, run in enumerate(runs(spec), start=1):
        done.append(run_once(svc, workdir, src, backlog, run, n))
        say(
            f"memory {run.name} (budget {run.budget_bytes / 2**20:.0f} MiB, delay {run.delay_s * 1000:.0f} ms): "
            f"{describe(done[-1])}"
        )
    return Results(backlog, done)
