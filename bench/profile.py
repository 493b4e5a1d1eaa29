"""`--profile`: the eventsink worker under `py-spy record -f raw`, summarised per frame.

py-spy samples the worker's running threads (idle ones are left out) `RATE` times a second, so
a frame's samples / RATE is CPU time spent in it; divided by the records of the workload it is
the time per event. Self time is charged to the innermost Python frame (time in C extensions
such as orjson, pydantic-core, uvloop or libpq counts for the Python frame that called them);
inclusive time to every frame of the stack.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from bench.measure import Plan

RATE = 100
TOP = 25
# Frames on more than this share of the samples are the launch chain (runpy, click, the loop
# runner): left out of the inclusive ranking, where they would only fill the top.
LAUNCH_CHAIN = 0.75
_LINE = re.compile(r":\d+\)$")

# What a frame (innermost Python frame of a sample) is charged to; the first match wins.
PACKAGES = (
    # mode's loop runners: self time there is the (uvloop, C) event loop of the thread.
    (
        "event loop (uvloop)",
        re.compile(r"^(Worker\.execute_from_commandline|ServiceThread\._start_thread) "),
    ),
    ("eventsink", re.compile(r"\((streams|sinks|schemas)/")),
    ("faust + mode", re.compile(r"\((faust|mode)/")),
    ("aiokafka", re.compile(r"\(aiokafka/")),
    ("psycopg", re.compile(r"\(psycopg(_pool)?/")),
    ("pydantic", re.compile(r"\(pydantic(_core)?/")),
    ("asyncio", re.compile(r"\(asyncio/")),
)


def wrap(plan: Plan, output: Path) -> Plan:
    """The same plan, its one process run under py-spy writing raw stacks to `output`."""
    if len(plan.commands) != 1:
        raise ValueError("profiling runs a single process")
    pyspy = Path(sys.executable).with_name("py-spy")
    command = [
        str(pyspy),
        "record",
        "--format",
        "raw",
        "--rate",
        str(RATE),
        "--output",
        str(output),
        "--",
        *plan.commands[0],
    ]
    return replace(plan, commands=[command], wrapped=True)


def _function(frame: str) -> str:
    """'fn (faust/x.py:12)' → 'fn (faust/x.py)' (py-spy already shortens paths by sys.path)."""
    return _LINE.sub(")", frame)


def _package(frame: str) -> str:
    for name, pattern in PACKAGES:
        if pattern.search(frame):
            return name
    return "other (stdlib, click, structlog, ...)"


def _thread(frames: list[str]) -> str:
    """'main' or the first frame of a thread that is not the threading module's."""
    if not frames[0].startswith("Thread._bootstrap"):
        return "main thread"
    own = [f for f in frames if "(threading.py)" not in f]
    return f"thread running {own[0] if own else frames[0]}"


@dataclass(frozen=True)
class Profile:
    samples: int
    events: int
    self_samples: Counter[str]
    inclusive_samples: Counter[str]
    package_samples: Counter[str]
    thread_samples: Counter[str]

    def us_per_event(self, samples: int) -> float:
        return samples / RATE / self.events * 1e6

    @property
    def cpu_seconds(self) -> float:
        return self.samples / RATE

    def inclusive_top(self) -> list[tuple[str, int]]:
        below = [(f, n) for f, n in self.inclusive_samples.most_common() if n <= LAUNCH_CHAIN * self.samples]
        return below[:TOP]


def summarise(raw: Path, events: int) -> Profile:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [_function(f) for f in stack.split(";")]
        n = int(count)
        own[frames[-1]] += n
        packages[_package(frames[-1])] += n
        threads[_thread(frames)] += n
        for frame in set(frames):
            inclusive[frame] += n
    return Profile(sum(own.values()), events, own, inclusive, packages, threads)
