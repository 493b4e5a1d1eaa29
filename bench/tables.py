"""Markdown pieces every scenario's report uses: tables, medians, ratios, the profile summary."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from bench.measure import Measurement
from bench.profile import LAUNCH_CHAIN, RATE, TOP, Profile

W = TypeVar("W")


@dataclass(frozen=True)
class ScenarioResults(Generic[W]):
    """One scenario of a run: its workload, every repetition, the profiled run if any."""

    workload: W
    runs: Sequence[Sequence[Measurement]]  # one list of contenders per repetition
    profile: Profile | None = None
    profiled_run: Measurement | None = None

    def of(self, name: str) -> list[Measurement]:
        return [m for run in self.runs for m in run if m.contender == name]

    @property
    def names(self) -> list[str]:
        return [m.contender for m in self.runs[0]]

    @property
    def measurements(self) -> list[Measurement]:
        return [m for run in self.runs for m in run]


def table(header: Sequence[str], right: Sequence[bool], rows: Iterable[Sequence[str]]) -> str:
    rule = "|".join("--:" if r else "---" for r in right)
    lines = [" | ".join(header), rule, *(" | ".join(row) for row in rows)]
    return "\n".join(f"| {line} |" if line != rule else f"|{rule}|" for line in lines)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def median_rate(values: Sequence[float | None]) -> str:
    """The median of the rates that could be measured, formatted; "-" if none."""
    known = [v for v in values if v is not None]
    return f"{median(known):,.0f}" if known else "-"


def per_round(
    runs: Sequence[Sequence[Measurement]],
    name: str,
    base: str,
    compare: Callable[[Measurement, Measurement], float | None],
) -> float | None:
    """Median over runs of `compare(name's measurement, base's)` in the same run, both successful
    (a round where it gives None is left out); None if no round has both."""
    found = []
    for run in runs:
        ok = {m.contender: m for m in run if m.ok}
        if name in ok and base in ok and (value := compare(ok[name], ok[base])) is not None:
            found.append(value)
    return median(found) if found else None


def ratio(
    runs: Sequence[Sequence[Measurement]],
    name: str,
    base: str,
    key: Callable[[Measurement], float | None] = lambda m: m.events_per_s,
) -> float | None:
    """Median over runs of name's `key` (events/s unless told) divided by base's in the same run."""

    def divide(m: Measurement, b: Measurement) -> float | None:
        top, bottom = key(m), key(b)
        return None if top is None or not bottom else top / bottom

    return per_round(runs, name, base, divide)


def difference(
    runs: Sequence[Sequence[Measurement]], name: str, base: str, key: Callable[[Measurement], float]
) -> float | None:
    """Median over runs of name's `key` minus base's in the same run."""
    return per_round(runs, name, base, lambda m, b: key(m) - key(b))


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def rss(ms: Sequence[Measurement]) -> str:
    """Median total peak RSS; with several processes, the median of each too."""
    total = f"{median([sum(m.rss_mb) for m in ms]):.0f}"
    if len(ms[0].rss_mb) < 2:
        return total
    each = [f"{median([m.rss_mb[i] for m in ms]):.0f}" for i in range(len(ms[0].rss_mb))]
    return f"{total} ({' + '.join(each)})"


def cpu_us(ms: Sequence[Measurement], records: int) -> str:
    return f"{median([m.cpu_s for m in ms]) / records * 1e6:.0f}"


def check(ms: Sequence[Measurement]) -> str:
    """The first failure's verdict, else the (same) verdict of every run."""
    bad = next((m for m in ms if not m.ok), None)
    if bad is None:
        return ms[0].check.summary()  # type: ignore[union-attr]
    return "**failed**" if bad.check is None else bad.check.summary()


def failures(results: ScenarioResults[W]) -> list[str]:
    return [f"{m.contender} run {m.run} failed: {m.error}" for m in results.measurements if m.error]


@dataclass(frozen=True)
class Column:
    """A column of a contender table: its cell from a contender's measurements (the successful
    ones, or with `of_all` every one)."""

    header: str
    cell: Callable[[Sequence[Measurement]], str]
    right: bool = True
    of_all: bool = False


def rate_column(header: str, rate: Callable[[Measurement], float | None]) -> Column:
    return Column(header, lambda ms: median_rate([rate(m) for m in ms]))


def common_columns(records: int) -> dict[str, Column]:
    return {
        "events/s": rate_column("events/s", lambda m: m.events_per_s),
        "first commit s": Column("first commit s", lambda ms: f"{median([m.first_commit_s for m in ms]):.1f}"),
        "total s": Column("total s", lambda ms: f"{median([m.seconds for m in ms]):.1f}"),
        "peak RSS MB": Column("peak RSS MB", rss),
        "CPU µs/event": Column("CPU µs/event", lambda ms: cpu_us(ms, records)),
    }


def verdict_column(header: str) -> Column:
    return Column(header, check, right=False, of_all=True)


def contender_table(results: ScenarioResults[W], columns: Sequence[Column]) -> str:
    """One row per contender: medians over its successful runs."""
    rows = []
    for name in results.names:
        every = results.of(name)
        ok = [m for m in every if m.ok]
        rows.append([name, *(c.cell(every if c.of_all else ok) if ok or c.of_all else "-" for c in columns)])
    return table(["contender", *(c.header for c in columns)], [False, *(c.right for c in columns)], rows)


def per_run_table(results: ScenarioResults[W], columns: Sequence[Column]) -> str:
    """One row per run of a contender."""
    columns = [
        *columns,
        Column("rest of the machine, CPU s", lambda ms: f"{ms[0].other_cpu_s:.1f}", of_all=True),
        Column("ok", lambda ms: "yes" if ms[0].ok else "no", right=False, of_all=True),
    ]
    rows = [[str(m.run), m.contender, *(c.cell([m]) for c in columns)] for m in results.measurements]
    return table(["run", "contender", *(c.header for c in columns)], [True, False, *(c.right for c in columns)], rows)


def closing_sections(results: ScenarioResults[W], per_run: Sequence[Column], profile_title: str) -> list[str]:
    """What ends a scenario's section: the table per run (when it ran more than once, with the
    `per_run` columns), the failures, and the worker's profile (when taken) under its title."""
    parts = []
    if len(results.runs) > 1:
        parts.append("Per run:\n\n" + per_run_table(results, per_run))
    parts += failures(results)
    if results.profile is not None:
        parts += [profile_title, profile_section(results.profile, results.profiled_run)]
    return parts


def _shares(profile: Profile, title: str, rows: Sequence[tuple[str, int]], code: bool = False) -> str:
    total = profile.samples
    cells = [[f"`{name}`" if code else name, f"{profile.us_per_event(n):.1f}", f"{n / total:.0%}"] for name, n in rows]
    return f"{title}\n\n" + table(["", "µs/event", "share"], [False, True, True], cells)


def profile_section(profile: Profile, run: Measurement | None) -> str:
    speed = f"{run.events_per_s:,.0f} events/s" if run and run.ok else "failed"
    inclusive = (
        f"Top {TOP} frames by inclusive time (the launch chain, frames on more than {LAUNCH_CHAIN:.0%} of the "
        "samples, left out):"
    )
    return "\n\n".join(
        [
            f"py-spy at {RATE} Hz over the whole worker process, start-up included (the run under the "
            f"profiler: {speed}): {profile.samples:,} samples = {profile.cpu_seconds:.1f} s of CPU for "
            f"{profile.events:,} records = **{profile.us_per_event(profile.samples):.0f} µs of CPU per "
            "event**. Self time is charged to the innermost Python frame: time in C (orjson, "
            "pydantic-core, uvloop, libpq) counts for its caller.",
            _shares(profile, "CPU by thread:", profile.thread_samples.most_common()),
            _shares(profile, "Self time by package:", profile.package_samples.most_common()),
            _shares(profile, f"Top {TOP} frames by self time:", profile.self_samples.most_common(TOP), code=True),
            _shares(profile, inclusive, profile.inclusive_top(), code=True),
        ]
    )
