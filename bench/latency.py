"""The latency scenario: how long a record takes from its Kafka timestamp to its row's commit, at
fixed publishing rates below one worker's maximum.

For each rate (a fraction of one worker's measured maximum, see bench.run) and each contender,
one at a time: a fresh database (migrated, then the commit clock installed: bench/commit_clock.py)
and a fresh topic holding one probe record per partition (bench/paced.py). The contender is
started and waited for until every probe's row is committed: it then consumes every partition.
Records are then published at the rate for the duration; the harness waits until every record's
row is committed (or `drain_s` passed since the last send), stops the contender and computes, per
record, latency = committed_at (PostgreSQL's clock_timestamp() at COMMIT) - CreateTime (this
host's time.time() when the harness handed the record to the producer), in milliseconds.

With several rounds (`--rounds`), every round runs the whole schedule again, the contenders' order
rotated by one each round, so that an anchor (the plain loop) and eventsink are compared round by
round on a machine whose speed drifts.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil
import psycopg

from bench import commit_clock, paced
from bench.commit_clock import ClockOffset
from bench.contenders import CONTENDERS, Contender, Context
from bench.latency_stats import Summary, fraction_rates, nearest, summarise
from bench.measure import Plan, Spawned, busy_cpu_s
from bench.paced import PROBE, LiveSpec, LiveTopic, Paced
from bench.revision import migrations
from bench.services import Services, fresh_database
from bench.session import Session, say
from streams.settings import Settings

# Contenders that run at one rate only run at the fraction nearest this one.
ONE_RATE = 0.5
POLL_S = 0.2


def _default(name: str) -> object:
    return Settings.model_fields[name].default


DEFAULT_BATCH = (
    f"EVENTSINK_BATCH_SIZE={_default('batch_size')}, EVENTSINK_BATCH_MAX_WAIT_MS={_default('batch_max_wait_ms')}"
)


@dataclass(frozen=True)
class LatencyContender:
    base: Contender  # the plan of the throughput scenarios
    description: str
    settings: Mapping[str, str] = field(default_factory=dict)  # environment on top of the plan's
    every_rate: bool = True  # else at the fraction nearest ONE_RATE only

    def plan(self, ctx: Context) -> Plan:
        plan = self.base.plan(ctx)
        return replace(plan, env={**plan.env, **self.settings}) if self.settings else plan


LATENCY_CONTENDERS = {
    "eventsink": LatencyContender(
        CONTENDERS["eventsink"], f"one `eventsink worker`, EVENTSINK_KINDS=metric, default batches ({DEFAULT_BATCH})"
    ),
    "eventsink-100ms": LatencyContender(
        CONTENDERS["eventsink"],
        "the same, EVENTSINK_BATCH_MAX_WAIT_MS=100: a partition's batch also waits up to 100 ms for "
        "EVENTSINK_BATCH_SIZE records (larger batches, fewer transactions than the adaptive default)",
        {"EVENTSINK_BATCH_MAX_WAIT_MS": "100"},
        every_rate=False,
    ),
    "eventsink-2s": LatencyContender(
        CONTENDERS["eventsink"],
        "the same, EVENTSINK_BATCH_SIZE=5000, EVENTSINK_BATCH_MAX_WAIT_MS=2000 (larger batches, fewer transactions)",
        {"EVENTSINK_BATCH_SIZE": "5000", "EVENTSINK_BATCH_MAX_WAIT_MS": "2000"},
        every_rate=False,
    ),
    "quix": LatencyContender(
        CONTENDERS["quix"],
        "Quix Streams (bench/quix_app.py), its default 5 s commit interval (the sink writes once per commit)",
    ),
    "quix-1s": LatencyContender(CONTENDERS["quix-1s"], "the same Quix Streams app with 1 s commits", every_rate=False),
    # What the machine and the broker allow at that rate: no validation, no ledger, no framework.
    "plain": LatencyContender(
        CONTENDERS["plain"],
        "the plain loop (bench/plain.py: aiokafka getmany, orjson, one COPY and upsert per partition batch), "
        "the anchor: the latency this machine and broker allow at each rate",
    ),
}


@dataclass(frozen=True)
class LatencySpec:
    fractions: tuple[float, ...]  # of the maximum rate, in the order run
    duration_s: float  # of publishing, per run
    partitions: int
    tenants: int
    seed: int
    drain_s: float = 30.0  # how long rows may take after the last send
    # One more run of eventsink's default at this many records/s (a light stream: a record must
    # not wait for a timer); 0: none.
    low_rate: int = 100
    ready_s: float = 120.0  # how long a contender may take to commit every probe
    producer: str = "aiokafka"  # bench.paced.PRODUCERS

    @property
    def live(self) -> LiveSpec:
        return LiveSpec(self.partitions, self.tenants, self.seed)


@dataclass(frozen=True)
class LatencyRun:
    contender: str
    fraction: float
    rate: int  # asked, records/s
    published: Paced | None = None
    committed: int = 0  # the published records whose row was committed
    to_commit: Summary | None = None  # ms, CreateTime -> commit
    to_received: Summary | None = None  # ms, CreateTime -> received_at (the transaction's start)
    to_ack: Summary | None = None  # ms, CreateTime -> the producer has the broker's acknowledgement
    transactions: int = 0  # that inserted the published records' rows
    ready_s: float = 0.0  # from the start of the contender to every probe's row committed
    cpu_s: float = 0.0  # the contender's, from the first send to the last row committed
    # Over the same interval: the harness's own CPU (its producer's threads included), the whole
    # machine's busy CPU time and its length; busy - contender - harness is the broker's,
    # PostgreSQL's and anything else's.
    harness_cpu_s: float = 0.0
    busy_cpu_s: float = 0.0
    seconds: float = 0.0
    rss_mb: float = 0.0  # peak, all its processes
    error: str | None = None
    round: int = 1
    # The broker's own CPU over the same interval, when the run started the broker (else None).
    broker_cpu_s: float | None = None

    @property
    def missing(self) -> int:
        """Published records with no committed row when the run ended."""
        return self.published.sent - self.committed if self.published else 0

    @property
    def ok(self) -> bool:
        return self.error is None and self.published is not None and self.missing == 0


@dataclass(frozen=True)
class LatencyResults:
    spec: LatencySpec
    max_rate: float  # records/s, what the fractions are of
    max_rate_from: str  # how it was measured, for the report
    runs: Sequence[LatencyRun]
    clock: ClockOffset | None  # PostgreSQL's clock against the harness's, measured once
    names: Sequence[str]
    rounds: int = 1

    @property
    def measurements(self) -> Sequence[LatencyRun]:
        return self.runs


def latencies(created_ms: Sequence[int], timed: Iterable[tuple[int, float, float]]) -> tuple[list[float], list[float]]:
    """(CreateTime -> commit, CreateTime -> received_at) in ms, from rows (i, committed ms, received ms)."""
    to_commit, to_received = [], []
    for i, committed, received in timed:
        to_commit.append(committed - created_ms[i])
        to_received.append(received - created_ms[i])
    return to_commit, to_received


def _timed(published: Paced, rows: Iterable[tuple[str, float, float]]) -> Iterable[tuple[int, float, float]]:
    for dedupe_id, committed, received in rows:
        i = published.index(dedupe_id)
        if i is not None:
            yield i, committed, received


def _own_cpu_s() -> float:
    """This process's CPU time, every thread's (the producer's own threads included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timeline(path: Path, published: Paced, timed: Sequence[tuple[int, float, float]]) -> None:
    """Per second of CreateTime since the first send: records sent, rows committed, and their
    p50, p99 and max latency to commit and to received_at (ms): where a tail comes from (a
    steady queue, or a few stalls)."""
    created = published.created_ms
    if not created:
        return
    t0 = created[0]
    buckets: dict[int, tuple[list[float], list[float]]] = {}
    for i, committed, received in timed:
        b = buckets.setdefault(int((created[i] - t0) // 1000), ([], []))
        b[0].append(committed - created[i])
        b[1].append(received - created[i])
    sent = [0] * (int((created[-1] - t0) // 1000) + 1)
    for c in created:
        sent[int((c - t0) // 1000)] += 1
    lines = ["second,sent,committed,commit_p50_ms,commit_p99_ms,commit_max_ms,received_p50_ms,received_p99_ms"]
    for second, n in enumerate(sent):
        to_commit, to_received = buckets.get(second, ([], []))
        c, r = summarise(to_commit), summarise(to_received)
        cells = [second, n, len(to_commit)]
        cells += [f"{c.p50:.0f}", f"{c.p99:.0f}", f"{c.max:.0f}"] if c else ["", "", ""]
        cells += [f"{r.p50:.0f}", f"{r.p99:.0f}"] if r else ["", ""]
        lines.append(",".join(map(str, cells)))
    path.write_text("\n".join(lines) + "\n")


def _wait(conn: psycopg.Connection, spawned: Sequence[Spawned], target: int, like: str | None, limit_s: float) -> str:
    """Poll until `target` rows (LIKE `like`) are committed: '' when they are, else why not."""
    deadline = time.monotonic() + limit_s
    while (n := commit_clock.count(conn, like)) < target:
        failed = next((s for s in spawned if s.exited()), None)
        if failed is not None:
            return f"exited early ({failed.log}):\n{failed.tail()}"
        if time.monotonic() > deadline:
            return f"{n:,} of {target:,} rows committed after {limit_s:.0f}s"
        time.sleep(POLL_S)
    return ""


def _cpu_s(pid: int | None) -> float | None:
    """A process's CPU time (user + system, its threads), or None without one or once it is gone."""
    if pid is None:
        return None
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system


def _drive(
    name: str,
    fraction: float,
    rate: int,
    plan: Plan,
    topic: LiveTopic,
    spec: LatencySpec,
    logs: Path,
    services: Services,
    rnd: int,
) -> LatencyRun:
    bootstrap = services.bootstrap
    tag = f"{name}-{round(fraction * 100)}-{rnd}"
    t0 = time.monotonic()
    spawned = [Spawned(cmd, plan, logs / f"{tag}-{i}.log", i) for i, cmd in enumerate(plan.commands)]
    try:
        with psycopg.connect(plan.dsn, autocommit=True) as conn:
            probes = spec.partitions
            if why := _wait(conn, spawned, probes, f"{PROBE}%", spec.ready_s):
                return LatencyRun(name, fraction, rate, error=f"not consuming: {why}", round=rnd)
            ready_s = time.monotonic() - t0
            for s in spawned:
                s.sample()
            cpu0 = sum(s.cpu_s for s in spawned)
            schedule = paced.Schedule(topic, rate, spec.duration_s)  # the records, made before the clock runs
            broker0 = _cpu_s(services.broker_pid)
            machine0, harness0, wall0 = busy_cpu_s(), _own_cpu_s(), time.monotonic()
            published = paced.publish(bootstrap, schedule, spec.producer)
            # Short of every row after the drain: the run is reported with the records missing.
            why = _wait(conn, spawned, published.sent + probes, None, spec.drain_s)
            for s in spawned:
                s.sample()
            cpu_s = sum(s.cpu_s for s in spawned) - cpu0
            machine = (busy_cpu_s() - machine0, _own_cpu_s() - harness0, time.monotonic() - wall0)
            broker1 = _cpu_s(services.broker_pid)
            broker_cpu_s = None if broker0 is None or broker1 is None else broker1 - broker0
            rss_mb = sum(s.final_peak() for s in spawned) / 2**20
            if any(s.exited() for s in spawned):
                return LatencyRun(
                    name, fraction, rate, published, error=why or "exited before it was stopped", round=rnd
                )
            timed = list(_timed(published, commit_clock.rows(conn)))
            to_commit, to_received = latencies(published.created_ms, timed)
            _timeline(logs / f"{tag}-timeline.csv", published, timed)
            transactions = commit_clock.transactions(conn, f"{PROBE}%")
    finally:
        for s in spawned:
            s.stop()
    return LatencyRun(
        name,
        fraction,
        rate,
        published,
        committed=len(to_commit),
        to_commit=summarise(to_commit),
        to_received=summarise(to_received),
        to_ack=summarise(published.to_ack_ms()),
        transactions=transactions,
        ready_s=ready_s,
        cpu_s=cpu_s,
        busy_cpu_s=machine[0],
        harness_cpu_s=machine[1],
        seconds=machine[2],
        rss_mb=rss_mb,
        round=rnd,
        broker_cpu_s=broker_cpu_s,
    )


def _describe(r: LatencyRun) -> str:
    if r.error:
        return f"FAILED: {r.error}"
    assert r.published is not None
    out = f"published {r.published.sent:,} at {r.published.achieved:,.0f}/s, committed {r.committed:,}"
    if r.to_commit is not None:
        s = r.to_commit
        out += f", to commit p50 {s.p50:.0f} p95 {s.p95:.0f} p99 {s.p99:.0f} max {s.max:.0f} ms"
    return out + f", {r.transactions:,} transactions, CPU {r.cpu_s:.1f}s"


def run_one(session: Session, name: str, fraction: float, rate: int, spec: LatencySpec, rnd: int = 1) -> LatencyRun:
    """One contender at one rate in round `rnd`, on its own database, topic and consumer group."""
    svc, workdir = session.services, session.workdir
    pct = round(fraction * 100) if fraction >= 0.01 else f"r{rate}"
    key = f"{pct}" if rnd == 1 else f"{pct}_{rnd}"  # round 1 keeps the names of a run without rounds
    group = f"bench-latency-{name}-{key}-{workdir.name}"
    logs = workdir / "latency"
    logs.mkdir(exist_ok=True)
    topic = LiveTopic(spec.live, f"bench.latency.{workdir.name}.{name}.{key}")
    with fresh_database(svc.admin_dsn, f"bench_latency_{name}_{key}", migrations(session.src)) as dsn:
        commit_clock.install(dsn)
        paced.create_and_probe(svc.bootstrap, topic)
        ctx = Context(svc.bootstrap, dsn, topic, group, workdir / group, session.src)
        r = _drive(name, fraction, rate, LATENCY_CONTENDERS[name].plan(ctx), topic, spec, logs, svc, rnd)
    say(f"latency {name} at {load(fraction, rate)} ({rate:,}/s), round {rnd}: {_describe(r)}")
    return r


def load(fraction: float, rate: int) -> str:
    """A run's load as reported: a percentage of the maximum, or records/s when below 1 %."""
    return f"{fraction:.0%}" if fraction >= 0.01 else f"{rate:,}/s"


def schedule(names: Sequence[str], fractions: Sequence[float], rnd: int = 1) -> list[tuple[float, str]]:
    """(fraction, contender) in the order run: by rate, then contender; one-rate contenders once.
    Round `rnd` rotates the contenders' order by rnd - 1."""
    one = nearest(fractions, ONE_RATE)
    shift = (rnd - 1) % len(names) if names else 0
    turn = [*names[shift:], *names[:shift]]
    return [(f, n) for f in fractions for n in turn if LATENCY_CONTENDERS[n].every_rate or f == one]


def scenario(
    session: Session,
    names: Sequence[str],
    spec: LatencySpec,
    max_rate: float,
    max_rate_from: str,
    rounds: int = 1,
) -> LatencyResults:
    rates = fraction_rates(spec.fractions, max_rate)
    with psycopg.connect(session.services.admin_dsn) as conn:
        clock = commit_clock.clock_offset(conn)
    runs = []
    for rnd in range(1, rounds + 1):
        runs += [run_one(session, name, f, rates[f], spec, rnd) for f, name in schedule(names, spec.fractions, rnd)]
        if spec.low_rate and "eventsink" in names:
            runs.append(run_one(session, "eventsink", spec.low_rate / max_rate, spec.low_rate, spec, rnd))
    return LatencyResults(spec, max_rate, max_rate_from, runs, clock, list(names), rounds)
