"""Timing one contender: spawn its processes, poll the database until done, verify, stop.

t0 is taken just before the first process is spawned; the database is polled every `poll_s`:
t_first is the first poll that sees a committed row, t_end the first that sees the whole
workload applied (on every topic of it). events/s = records sent / (t_end - t0); steady rows/s
= rows / (t_end - t_first), steady events/s = records / (t_end - t_first). Peak RSS per process
is the larger of psutil's samples (taken at each poll) and the kernel's high-water mark (VmHWM),
read just before the process is stopped; its CPU time (user + system, start-up included) is
taken at the last poll. The machine's busy CPU time over the same interval, less the
contender's, is what the rest of the machine used meanwhile (PostgreSQL, the broker, the
harness, and anything else running): an outlier there tells of outside load.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg

from bench.verify import Verdict

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Progress:
    started: bool  # at least one row committed
    done: bool  # the whole workload applied
    topics_done: frozenset[str] = frozenset()  # the topics whose records are all applied


Probe = Callable[[psycopg.Connection], Progress]


class LedgerProbe:
    """eventsink's protocol: the offsets ledger counts every record a group has dealt with, per
    topic; done when each topic's sum reaches the records sent to it."""

    SQL = """
        SELECT topic, sum(events), sum(rows_applied)
        FROM eventsink.offsets_ledger WHERE consumer_group = %s AND topic = ANY(%s) GROUP BY topic
    """

    def __init__(self, group: str, sent: Mapping[str, int]) -> None:
        self.params = (group, list(sent))
        self.sent = dict(sent)

    def __call__(self, conn: psycopg.Connection) -> Progress:
        rows = conn.execute(self.SQL, self.params).fetchall()
        done = frozenset(topic for topic, events, _ in rows if events >= self.sent[topic])
        return Progress(any(applied > 0 for _, _, applied in rows), done == self.sent.keys(), done)


class TableProbe:
    """Rows in the table. max(id) (one index probe) bounds the count from above: the exact
    count(*) runs only once that bound reaches the target, so polling stays cheap."""

    def __init__(self, unique: int) -> None:
        self.unique = unique

    def __call__(self, conn: psycopg.Connection) -> Progress:
        (top,) = conn.execute("SELECT max(id) FROM eventsink.metrics_raw").fetchone()  # type: ignore[misc]
        if top is None or top < self.unique:
            return Progress(top is not None, False)
        (rows,) = conn.execute("SELECT count(*) FROM eventsink.metrics_raw").fetchone()  # type: ignore[misc]
        return Progress(True, rows >= self.unique)


@dataclass(frozen=True)
class Plan:
    """How to run a contender: one command per process, their environment, how done is seen."""

    commands: Sequence[Sequence[str]]
    env: dict[str, str]
    cwd: Path  # the snapshot of the sources the processes import (bench.revision)
    probe: Probe
    dsn: str  # the contender's database, which the probe polls
    process_env: Sequence[Mapping[str, str]] = ()  # if given, added to env, one per command
    # Each command is `py-spy record ... -- worker`: signal and measure py-spy's child.
    wrapped: bool = False


@dataclass(frozen=True)
class Measurement:
    contender: str
    run: int
    seconds: float = 0.0  # t_end - t0
    first_commit_s: float = 0.0  # t_first - t0
    events_per_s: float = 0.0
    steady_rows_per_s: float | None = None  # None: every row came within one poll interval
    steady_events_per_s: float | None = None
    topic_done_s: dict[str, float] = field(default_factory=dict)  # when each topic was all applied
    rss_mb: tuple[float, ...] = ()  # peak per process
    cpu_s: float = 0.0  # all processes
    other_cpu_s: float = 0.0  # the rest of the machine, from t0 to t_end
    check: Verdict | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.check is not None and self.check.ok


def vm_hwm(pid: int) -> int:
    """The kernel's peak resident set size of a process, in bytes (0 once it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class Spawned:
    """One spawned process, and the process that is the contender (itself, or its child)."""

    def __init__(self, command: Sequence[str], plan: Plan, log: Path, index: int) -> None:
        self.log = log
        extra = plan.process_env[index] if plan.process_env else {}
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                list(command),
                env={**plan.env, **extra},
                cwd=plan.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wrapped = plan.wrapped
        self.peak = 0
        self.cpu_s = 0.0

    def target(self) -> psutil.Process | None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.popen.pid)
            if not self.wrapped:
                return root
            children = root.children()
            return children[0] if children else None
        return None

    def _tree(self) -> list[psutil.Process]:
        target = self.target()
        if target is None:
            return []
        with contextlib.suppress(psutil.Error):
            return [target, *target.children(recursive=True)]
        return []

    def sample(self) -> int:
        """Record the peak RSS and the CPU time so far; the RSS now, in bytes."""
        rss, cpu = 0, 0.0
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                rss += p.memory_info().rss
                times = p.cpu_times()
                cpu += times.user + times.system
        self.peak = max(self.peak, rss)
        self.cpu_s = max(self.cpu_s, cpu)
        return rss

    def final_peak(self) -> int:
        return max(self.peak, sum(vm_hwm(p.pid) for p in self._tree()))

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def stop(self, timeout: float = 60.0) -> None:
        target = self.target()
        if target is not None and target.is_running():
            with contextlib.suppress(psutil.Error):
                target.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def busy_cpu_s() -> float:
    """CPU time the whole machine has spent busy (neither idle nor waiting for I/O)."""
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def measure(
    contender: str,
    run: int,
    plan: Plan,
    sent: int,
    verify: Callable[[], Verdict],
    logs: Path,
    timeout_s: float,
    poll_s: float = 0.15,
) -> Measurement:
    """Run the plan's processes until the probe says done (or they fail), then check the rows."""
    busy0, t0 = busy_cpu_s(), time.perf_counter()
    spawned = [Spawned(cmd, plan, logs / f"{contender}-{run}-{i}.log", i) for i, cmd in enumerate(plan.commands)]
    t_first = t_end = None
    topic_done: dict[str, float] = {}
    try:
        with psycopg.connect(plan.dsn, autocommit=True) as conn:
            while t_end is None:
                progress = plan.probe(conn)
                now = time.perf_counter()
                for s in spawned:
                    s.sample()
                if progress.started and t_first is None:
                    t_first = now
                for topic in progress.topics_done - topic_done.keys():
                    topic_done[topic] = now - t0
                failed = next((s for s in spawned if s.exited()), None)
                if progress.done:
                    t_end, busy = now, busy_cpu_s() - busy0
                elif failed is not None:
                    return Measurement(contender, run, error=f"exited early ({failed.log}):\n{failed.tail()}")
                elif now - t0 > timeout_s:
                    return Measurement(contender, run, error=f"not done after {timeout_s:.0f}s (logs in {logs})")
                else:
                    time.sleep(poll_s)
        peaks = tuple(s.final_peak() / 2**20 for s in spawned)
        cpu_s = sum(s.cpu_s for s in spawned)
    finally:
        for s in spawned:
            s.stop()
    check = verify()
    assert t_first is not None
    steady = t_end - t_first
    return Measurement(
        contender,
        run,
        seconds=t_end - t0,
        first_commit_s=t_first - t0,
        events_per_s=sent / (t_end - t0),
        steady_rows_per_s=check.rows / steady if steady > 0 else None,
        steady_events_per_s=sent / steady if steady > 0 else None,
        topic_done_s=topic_done,
        rss_mb=peaks,
        cpu_s=cpu_s,
        other_cpu_s=busy - cpu_s,
        check=check,
    )
