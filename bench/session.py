"""Running the contenders of one scenario, one at a time, each on its own database and group."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench import profile
from bench.contenders import Contender, Context
from bench.measure import Measurement, measure
from bench.mixed import MixedWorkload
from bench.revision import migrations
from bench.services import Services, fresh_database
from bench.tables import ScenarioResults, median_rate
from bench.workload import Workload

W = TypeVar("W", Workload, MixedWorkload)


def say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def _describe(m: Measurement, topics: Mapping[str, str]) -> str:
    if m.error:
        return f"FAILED: {m.error}"
    if len(topics) > 1:
        steady = f"{median_rate([m.steady_events_per_s])} steady events/s"
        done = ", applied " + ", ".join(f"{k} {m.topic_done_s.get(t, 0):.1f}s" for k, t in topics.items())
    else:
        steady, done = f"{median_rate([m.steady_rows_per_s])} steady rows/s", ""
    return (
        f"{m.events_per_s:,.0f} events/s, {steady}, "
        f"first commit {m.first_commit_s:.1f}s{done}, done {m.seconds:.1f}s, "
        f"peak RSS {' + '.join(f'{r:.0f}' for r in m.rss_mb)} MB, "
        f"CPU {m.cpu_s:.1f}s, check: {m.check.summary() if m.check else '-'}"
    )


def rotations(names: Sequence[str], repeat: int) -> list[list[str]]:
    """The order of the contenders in each run: rotated by one from run to run."""
    return [[*names[i % len(names) :], *names[: i % len(names)]] for i in range(repeat)]


@dataclass(frozen=True)
class Session:
    """What the contenders of one `bench.run` share."""

    services: Services
    workdir: Path
    src: Path  # the snapshot of the sources every process runs
    timeout: float

    def run(
        self, scenario: str, name: str, contender: Contender, workload: W, run: int, profile_to: Path | None = None
    ) -> Measurement:
        svc = self.services
        group = f"bench-{scenario}-{name}-{run}-{self.workdir.name}"
        logs = self.workdir / scenario
        logs.mkdir(exist_ok=True)
        src = contender.src or self.src
        with fresh_database(svc.admin_dsn, f"bench_{scenario}_{name}_{run}", migrations(src)) as dsn:
            ctx = Context(svc.bootstrap, dsn, workload, group, self.workdir / group, src)
            plan = contender.plan(ctx)
            if profile_to is not None:
                plan = profile.wrap(plan, profile_to)
            m = measure(name, run, plan, workload.sent, lambda: workload.verify(dsn), logs, self.timeout)
        say(f"{scenario} {name} run {run}: {_describe(m, workload.topics)}")
        return m

    def scenario(
        self,
        scenario: str,
        contenders: Mapping[str, Contender],
        names: Sequence[str],
        workload: W,
        repeat: int,
        with_profile: bool,
    ) -> ScenarioResults[W]:
        """Every contender `repeat` times, their order rotating; then eventsink under py-spy."""
        runs: list[list[Measurement]] = []
        for n, order in enumerate(rotations(names, repeat), start=1):
            done = {name: self.run(scenario, name, contenders[name], workload, n) for name in order}
            runs.append([done[name] for name in names])
        if not with_profile:
            return ScenarioResults(workload, runs)
        raw = self.workdir / f"eventsink-{scenario}-profile.raw"
        profiled = self.run(scenario, "eventsink", contenders["eventsink"], workload, 0, profile_to=raw)
        summary = profile.summarise(raw, workload.sent) if raw.is_file() else None
        return ScenarioResults(workload, runs, summary, profiled)
