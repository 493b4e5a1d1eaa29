"""The rebalance scenario (issue 21): what a second worker joining, then leaving, costs the
partitions that did not move.

One run: a fresh database (migrated, the commit clock installed: bench/commit_clock.py, plus the
ledger clock below) and a fresh topic of 8 partitions holding one probe record per partition
(bench/paced.py). Worker A (`eventsink worker`, EVENTSINK_LOG_LEVEL=INFO so that it logs its
assignments) starts alone and is waited for until every probe's row is committed: it then owns
and consumes every partition. Metric events are then published at a fixed rate for
`duration_s`; `join_s` after the first send worker B (the same command and environment, the same
consumer group) is spawned, and `leave_s` after the first send B gets SIGTERM (it drains and
leaves the group). The harness waits until every record's row is committed, then stops A.

Per-partition commit times: the ledger clock, a constraint trigger DEFERRABLE INITIALLY DEFERRED
on UPDATE of `eventsink.offsets_ledger` when `last_offset` moves (every batch advances its
partition's row in its own transaction), writes at COMMIT the partition, the new last offset,
`clock_timestamp()` and the client port of the committing connection (`inet_client_port()`)
into `bench_clock.ledger`. The harness maps client ports to workers: every `POLL_S` it lists the
TCP connections of each worker's processes to PostgreSQL (psutil). A port seen for no worker
(a connection opened and closed between two polls) leaves its commits' worker unknown.

Ownership: each worker logs `partitions assigned` with its whole new assignment after every
rebalance (streams/worker/app.py); the log lines carry their UTC timestamps. For an event (B
joins, B leaves), the partitions that did not move are those A had in its last assignment
before the event and in its first one after it; the others of A's before (join) or after
(leave) moved. A gap is an interval between two successive commits of one partition; the gaps
of an event are those that end after the event and, for the join, no later than the leave,
measured whole (the part before the event included).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import orjson
import psutil
import psycopg

from bench import commit_clock, paced
from bench.commit_clock import ClockOffset
from bench.contenders import CONTENDERS as ALL
from bench.contenders import Context, eventsink
from bench.latency import latencies
from bench.latency_stats import Summary, summarise
from bench.measure import Plan, Spawned
from bench.paced import PROBE, LiveSpec, LiveTopic, Paced
from bench.revision import migrations
from bench.services import fresh_database
from bench.session import Session, say

POLL_S = 0.1
CONTENDERS = {"eventsink": ALL["eventsink"]}  # for --only: the scenario runs eventsink's worker
PG_PORT_SQL = "SELECT inet_server_port()"

LEDGER_CLOCK = """
CREATE UNLOGGED TABLE bench_clock.ledger (
    partition    integer     NOT NULL,
    last_offset  bigint      NOT NULL,
    events       bigint      NOT NULL,  -- this transaction's, NEW.events - OLD.events
    client_port  integer,               -- of the committing connection
    committed_at timestamptz NOT NULL   -- clock_timestamp() when the transaction commits
);
CREATE FUNCTION bench_clock.note_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_clock.ledger
    VALUES (NEW.partition, NEW.last_offset, NEW.events - OLD.events, inet_client_port(), clock_timestamp());
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER bench_ledger_clock AFTER UPDATE ON eventsink.offsets_ledger
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.last_offset > OLD.last_offset)
    EXECUTE FUNCTION bench_clock.note_ledger();
"""
LEDGER_ROWS = """
SELECT partition, (extract(epoch FROM committed_at) * 1000)::float8, client_port, events
FROM bench_clock.ledger ORDER BY committed_at
"""
CHECK = """
SELECT count(*), count(DISTINCT (tenant_id, dedupe_id)) FROM eventsink.metrics_raw
"""
LEDGER_EVENTS = "SELECT coalesce(sum(events), 0) FROM eventsink.offsets_ledger WHERE consumer_group = %s"


@dataclass(frozen=True)
class RebalanceSpec:
    rate: int  # records/s
    rate_from: str  # how it was chosen, for the report
    duration_s: float = 40.0  # of publishing
    join_s: float = 10.0  # after the first send, B is spawned
    leave_s: float = 25.0  # after the first send, B gets SIGTERM
    partitions: int = 8
    tenants: int = 50
    seed: int = 1
    drain_s: float = 30.0  # how long rows may take after the last send
    ready_s: float = 120.0  # how long A may take to commit every probe
    producer: str = "aiokafka"  # bench.paced.PRODUCERS

    @property
    def live(self) -> LiveSpec:
        return LiveSpec(self.partitions, self.tenants, self.seed)


@dataclass(frozen=True)
class Commit:
    partition: int
    at_ms: float  # PostgreSQL's clock_timestamp() at COMMIT, ms since the epoch
    worker: str  # "A", "B" or "?" (client port not seen)
    events: int


@dataclass(frozen=True)
class Assignment:
    at_ms: float  # the log line's timestamp
    worker: str
    partitions: frozenset[int]


@dataclass(frozen=True)
class Gap:
    partition: int
    start_ms: float  # the commit before
    end_ms: float  # the commit after

    @property
    def ms(self) -> float:
        return self.end_ms - self.start_ms


@dataclass(frozen=True)
class Event:
    """One membership change, seen from A's assignments and the partitions' commits."""

    name: str  # "join" or "leave"
    at_ms: float  # B spawned / B signalled, this host's clock
    until_ms: float  # gaps ending after at_ms and by until_ms count
    unmoved: frozenset[int]
    moved: frozenset[int]
    unmoved_gap: Gap | None  # the longest
    moved_gap: Gap | None
    a_last_ms: float | None  # A's last commit (any partition) before that assignment, from the event
    assigned_ms: float | None  # A's first assignment after the event, from the event
    sought_ms: float | None  # A's first `sought to the ledger` after that assignment, from the event
    b_assigned_ms: float | None  # join: B's first assignment, from the event
    b_started_ms: float | None  # join: B's `worker starting` (interpreter up, imports done), from the event
    handover_ms: float | None  # join: B's first commit; leave: A's first commit on B's partitions


@dataclass(frozen=True)
class RebalanceRun:
    spec: RebalanceSpec
    published: Paced | None = None
    committed: int = 0  # published records whose row was committed
    rows: int = 0  # rows in metrics_raw, probes included
    distinct: int = 0  # distinct (tenant_id, dedupe_id) among them
    ledger_events: int = 0
    to_commit: Summary | None = None
    first_send_ms: float = 0.0
    baseline_gap: Gap | None = None  # longest gap before B joined, every partition, A alone
    events: Sequence[Event] = ()
    assignments: Sequence[Assignment] = ()
    unknown_commits: int = 0  # commits whose connection was not mapped to a worker
    foreign_commits: int = 0  # commits on a partition by a worker whose last logged assignment lacked it
    ready_s: float = 0.0
    b_stop_s: float = 0.0  # from SIGTERM to B's exit
    logs: tuple[str, ...] = ()
    error: str | None = None

    @property
    def missing(self) -> int:
        return self.published.sent - self.committed if self.published else 0

    @property
    def exact(self) -> bool:
        """Every published record's row once, nothing else: rows == records + probes, all unique."""
        if self.published is None:
            return False
        expected = self.published.sent + self.spec.partitions
        return self.missing == 0 and self.rows == self.distinct == expected and self.ledger_events == expected

    @property
    def ok(self) -> bool:
        return self.error is None and self.exact

    @property
    def measurements(self) -> Sequence[RebalanceRun]:
        return [self]


@dataclass(frozen=True)
class RebalanceResults:
    runs: Sequence[RebalanceRun]
    clock: ClockOffset | None
    session_timeout_ms: int
    worker: str  # description of the workers' command and settings

    @property
    def measurements(self) -> Sequence[RebalanceRun]:
        return self.runs


def install_ledger_clock(dsn: str) -> None:
    """After commit_clock.install (its schema): per ledger advance, the partition and commit time."""
    with psycopg.connect(dsn) as conn:
        conn.execute(LEDGER_CLOCK)


@dataclass
class Ports:
    """Client ports of each worker's connections to PostgreSQL, as seen by polling."""

    pg_port: int
    seen: dict[int, str] = field(default_factory=dict)

    def poll(self, workers: Mapping[str, Spawned]) -> None:
        for name, s in workers.items():
            for p in _tree(s):
                with contextlib.suppress(psutil.Error):
                    for c in p.net_connections(kind="tcp"):
                        if c.raddr and c.raddr.port == self.pg_port and c.laddr:
                            self.seen[c.laddr.port] = name


def _tree(s: Spawned) -> list[psutil.Process]:
    target = s.target()
    if target is None:
        return []
    with contextlib.suppress(psutil.Error):
        return [target, *target.children(recursive=True)]
    return []


def _iso_ms(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000


def marks(log: Path, event: str) -> list[tuple[float, dict]]:
    """(timestamp ms, entry) of the worker's JSON log lines whose event is `event`, in order."""
    found = []
    key = event.encode()
    for line in log.read_bytes().splitlines():
        if key not in line:
            continue
        with contextlib.suppress(ValueError, KeyError, TypeError):
            entry = orjson.loads(line)
            if entry.get("event") == event:
                found.append((_iso_ms(entry["timestamp"]), entry))
    return found


def assignments(log: Path, worker: str) -> list[Assignment]:
    """The worker's `partitions assigned` lines, in order."""
    return [Assignment(at, worker, frozenset(e["partitions"])) for at, e in marks(log, "partitions assigned")]


def _first_after(stamps: Sequence[float], at_ms: float) -> float | None:
    return next((t - at_ms for t in stamps if t > at_ms), None)


def _before(found: Sequence[Assignment], worker: str, at_ms: float) -> Assignment | None:
    mine = [a for a in found if a.worker == worker and a.at_ms <= at_ms]
    return mine[-1] if mine else None


def _after(found: Sequence[Assignment], worker: str, at_ms: float) -> Assignment | None:
    return next((a for a in found if a.worker == worker and a.at_ms > at_ms), None)


def gaps(commits: Sequence[Commit], partitions: Iterable[int], from_ms: float, until_ms: float) -> list[Gap]:
    """Intervals between successive commits of each partition that end after `from_ms` and no later
    than `until_ms` (commits sorted by time)."""
    wanted = set(partitions)
    last: dict[int, float] = {}
    out = []
    for c in commits:
        if c.partition not in wanted:
            continue
        prev = last.get(c.partition)
        if prev is not None and from_ms < c.at_ms <= until_ms:
            out.append(Gap(c.partition, prev, c.at_ms))
        last[c.partition] = c.at_ms
    return out


def longest(found: Sequence[Gap]) -> Gap | None:
    return max(found, key=lambda g: g.ms, default=None)


def foreign(commits: Sequence[Commit], found: Sequence[Assignment]) -> int:
    """Commits by a worker whose last logged assignment did not hold the partition."""
    n = 0
    for c in commits:
        a = _before(found, c.worker, c.at_ms)
        if c.worker != "?" and (a is None or c.partition not in a.partitions):
            n += 1
    return n


def analyse(
    commits: Sequence[Commit],
    found: Sequence[Assignment],
    name: str,
    at_ms: float,
    until_ms: float,
    partitions: int,
    sought: Sequence[float] = (),
    b_started: Sequence[float] = (),
) -> Event:
    a_before, a_after = _before(found, "A", at_ms), _after(found, "A", at_ms)
    before = a_before.partitions if a_before else frozenset(range(partitions))
    after = a_after.partitions if a_after else frozenset()
    unmoved = before & after
    moved = (before - after) if name == "join" else (after - before)
    b_after = _after(found, "B", at_ms) if name == "join" else None
    if name == "join":
        handover = next((c.at_ms for c in commits if c.worker == "B" and c.at_ms > at_ms), None)
    else:
        handover = next(
            (c.at_ms for c in commits if c.worker == "A" and c.partition in moved and c.at_ms > at_ms), None
        )
    a_last = (
        max((c.at_ms for c in commits if c.worker == "A" and at_ms < c.at_ms < a_after.at_ms), default=None)
        if a_after
        else None
    )
    return Event(
        name,
        at_ms,
        until_ms,
        unmoved,
        moved,
        longest(gaps(commits, unmoved, at_ms, until_ms)),
        longest(gaps(commits, moved, at_ms, until_ms)),
        a_last - at_ms if a_last is not None else None,
        a_after.at_ms - at_ms if a_after else None,
        _first_after(sought, a_after.at_ms) + a_after.at_ms - at_ms
        if a_after and _first_after(sought, a_after.at_ms) is not None
        else None,
        b_after.at_ms - at_ms if b_after else None,
        _first_after(b_started, at_ms) if name == "join" else None,
        handover - at_ms if handover is not None else None,
    )


def _wait_rows(
    conn: psycopg.Connection,
    alive: Sequence[Spawned],
    target: int,
    like: str | None,
    limit_s: float,
    tick: Callable[[], None],
) -> str:
    """Poll (and tick) until `target` rows (LIKE `like`) are committed: '' when they are, else why not."""
    deadline = time.monotonic() + limit_s
    while (n := commit_clock.count(conn, like)) < target:
        failed = next((s for s in alive if s.exited()), None)
        if failed is not None:
            return f"exited early ({failed.log}):\n{failed.tail()}"
        if time.monotonic() > deadline:
            return f"{n:,} of {target:,} rows committed after {limit_s:.0f}s"
        tick()
        time.sleep(POLL_S)
    return ""


def _publisher(bootstrap: str, topic: LiveTopic, spec: RebalanceSpec, box: list[object]) -> threading.Thread:
    # The records are made now, so that the first send follows the thread's start at once.
    schedule = paced.Schedule(topic, spec.rate, spec.duration_s)

    def publish() -> None:
        try:
            box.append(paced.publish(bootstrap, schedule, spec.producer))
        except BaseException as exc:  # reported by the caller
            box.append(exc)

    return threading.Thread(target=publish, name="publisher", daemon=True)


def _drive(spec: RebalanceSpec, plan: Plan, topic: LiveTopic, logs: Path, bootstrap: str, group: str) -> RebalanceRun:
    with psycopg.connect(plan.dsn, autocommit=True) as conn:
        (pg_port,) = conn.execute(PG_PORT_SQL).fetchone()  # type: ignore[misc]
        ports = Ports(int(pg_port))
        t0 = time.monotonic()
        a = Spawned(plan.commands[0], plan, logs / "rebalance-A.log", 0)
        workers: dict[str, Spawned] = {"A": a}
        b: Spawned | None = None
        b_stop_s = 0.0
        try:

            def tick() -> None:
                ports.poll(workers)

            if why := _wait_rows(conn, [a], spec.partitions, f"{PROBE}%", spec.ready_s, tick):
                return RebalanceRun(spec, error=f"A not consuming: {why}")
            ready_s = time.monotonic() - t0
            box: list[object] = []
            publisher = _publisher(bootstrap, topic, spec, box)
            first_send = time.time() * 1000
            start = time.monotonic()
            publisher.start()
            join_ms = leave_ms = 0.0
            signalled = 0.0
            while publisher.is_alive():
                now = time.monotonic() - start
                if b is None and now >= spec.join_s:
                    join_ms = time.time() * 1000
                    b = Spawned(plan.commands[1], plan, logs / "rebalance-B.log", 1)
                    workers["B"] = b
                elif b is not None and not leave_ms and now >= spec.leave_s:
                    target = b.target()
                    leave_ms, signalled = time.time() * 1000, time.monotonic()
                    if target is not None:
                        target.send_signal(signal.SIGTERM)
                if b is not None and leave_ms and not b_stop_s and b.exited():
                    b_stop_s = time.monotonic() - signalled
                if a.exited() or (b is not None and not leave_ms and b.exited()):
                    break
                tick()
                time.sleep(POLL_S)
            publisher.join()
            if not box or isinstance(box[0], BaseException):
                return RebalanceRun(spec, error=f"publishing failed: {box[0] if box else 'no result'}")
            published = box[0]
            assert isinstance(published, Paced)
            if not leave_ms or b is None:
                return RebalanceRun(spec, published, error="publishing ended before B joined and left")
            why = _wait_rows(conn, [a], published.sent + spec.partitions, None, spec.drain_s, tick)
            if b is not None and not b_stop_s:
                b.popen.wait(60)
                b_stop_s = time.monotonic() - signalled
            if why:
                return RebalanceRun(spec, published, error=why)
            rows = list(commit_clock.rows(conn))
            to_commit, _ = latencies(published.created_ms, _timed(published, rows))
            (n_rows, n_distinct) = conn.execute(CHECK).fetchone()  # type: ignore[misc]
            (ledger_events,) = conn.execute(LEDGER_EVENTS, (group,)).fetchone()  # type: ignore[misc]
            commits = [
                Commit(p, at, ports.seen.get(port, "?") if port is not None else "?", events)
                for p, at, port, events in conn.execute(LEDGER_ROWS).fetchall()
            ]
        finally:
            for s in workers.values():
                s.stop()
    found = sorted([*assignments(a.log, "A"), *(assignments(b.log, "B") if b else [])], key=lambda x: x.at_ms)
    sought = [t for t, _ in marks(a.log, "sought to the ledger")]
    b_started = [t for t, _ in marks(b.log, "worker starting")] if b else []
    events = [
        analyse(commits, found, "join", join_ms, leave_ms, spec.partitions, sought, b_started),
        analyse(commits, found, "leave", leave_ms, float("inf"), spec.partitions, sought),
    ]
    return RebalanceRun(
        spec,
        published,
        committed=len(to_commit),
        rows=int(n_rows),
        distinct=int(n_distinct),
        ledger_events=int(ledger_events),
        to_commit=summarise(to_commit),
        first_send_ms=first_send,
        baseline_gap=longest(gaps(commits, range(spec.partitions), first_send + 2000, join_ms)),
        events=events,
        assignments=found,
        unknown_commits=sum(c.worker == "?" for c in commits),
        foreign_commits=foreign(commits, found),
        ready_s=ready_s,
        b_stop_s=b_stop_s,
        logs=(str(a.log), str(b.log)),
    )


def _timed(published: Paced, rows: Iterable[tuple[str, float, float]]) -> Iterable[tuple[int, float, float]]:
    for dedupe_id, committed, received in rows:
        i = published.index(dedupe_id)
        if i is not None:
            yield i, committed, received


def plan(ctx: Context) -> Plan:
    """Two `eventsink worker` commands (A, B), each with its own web port, logging at INFO in JSON."""
    p = eventsink(ctx, workers=2)
    return replace(p, env={**p.env, "EVENTSINK_LOG_LEVEL": "INFO", "EVENTSINK_LOG_FORMAT": "json"})


WORKER = (
    "`eventsink worker` (EVENTSINK_KINDS=metric, default settings, EVENTSINK_LOG_LEVEL=INFO so that it logs "
    "its assignments), A from the start, B the same command in the same group"
)


def run_one(session: Session, spec: RebalanceSpec, n: int) -> RebalanceRun:
    svc, workdir = session.services, session.workdir
    group = f"bench-rebalance-{n}-{workdir.name}"
    logs = workdir / "rebalance" / str(n)
    logs.mkdir(parents=True, exist_ok=True)
    topic = LiveTopic(spec.live, f"bench.rebalance.{workdir.name}.{n}")
    with fresh_database(svc.admin_dsn, f"bench_rebalance_{n}", migrations(session.src)) as dsn:
        commit_clock.install(dsn)
        install_ledger_clock(dsn)
        paced.create_and_probe(svc.bootstrap, topic)
        ctx = Context(svc.bootstrap, dsn, topic, group, workdir / group, session.src)
        r = _drive(spec, plan(ctx), topic, logs, svc.bootstrap, group)
    say(f"rebalance run {n}: {describe(r)}")
    return r


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f} ms"


def describe(r: RebalanceRun) -> str:
    if r.error:
        return f"FAILED: {r.error}"
    assert r.published is not None
    parts = [f"published {r.published.sent:,} at {r.published.achieved:,.0f}/s, committed {r.committed:,}"]
    for e in r.events:
        parts.append(
            f"{e.name}: longest gap unmoved {_ms(e.unmoved_gap.ms if e.unmoved_gap else None)}, "
            f"moved {_ms(e.moved_gap.ms if e.moved_gap else None)}"
        )
    if r.to_commit:
        parts.append(f"p99 {r.to_commit.p99:,.0f} max {r.to_commit.max:,.0f} ms")
    return "; ".join(parts)


def scenario(session: Session, spec: RebalanceSpec, repeat: int, session_timeout_ms: int) -> RebalanceResults:
    with psycopg.connect(session.services.admin_dsn) as conn:
        clock = commit_clock.clock_offset(conn)
    runs = [run_one(session, spec, n) for n in range(1, repeat + 1)]
    return RebalanceResults(runs, clock, session_timeout_ms, WORKER)
