"""The results of a run as Markdown: printed, and appended to bench/RESULTS.md with --record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench import memory, report_latency, report_memory, report_metric, report_mixed, report_rebalance
from bench.contenders import SESSION_TIMEOUT_MS
from bench.latency import LatencyResults
from bench.rebalance import RebalanceResults


@dataclass(frozen=True)
class Results:
    date: str
    machine: str
    services: str
    eventsink: str  # the commit and source digest measured
    repeat: int
    metric: report_metric.Results | None = None
    mixed: report_mixed.Results | None = None
    latency: LatencyResults | None = None
    memory: memory.Results | None = None
    rebalance: RebalanceResults | None = None

    @property
    def ok(self) -> bool:
        scenarios = [s for s in (self.metric, self.mixed, self.latency, self.rebalance) if s is not None]
        return all(m.ok for s in scenarios for m in s.measurements) and (self.memory is None or self.memory.ok)


def _order(results: Results) -> str:
    said = []
    if results.metric is not None or results.mixed is not None:
        said.append("the order of the contenders rotates from run to run")
    if results.latency is not None:
        rounds = results.latency.rounds
        said.append(
            "latency: "
            + ("one run" if rounds == 1 else f"{rounds} rounds, one run each,")
            + " of each contender at each rate, rates in the order of --rates"
        )
    if results.rebalance is not None:
        said.append("rebalance: two workers of one group, one at a time")
    return "; ".join(said)


def render(results: Results) -> str:
    named = (
        ("metric", results.metric),
        ("mixed", results.mixed),
        ("latency", results.latency),
        ("memory", results.memory),
        ("rebalance", results.rebalance),
    )
    scenarios = [name for name, s in named if s is not None]
    parts = [
        f"## {results.date}: {' + '.join(scenarios)} scenario{'s' if len(scenarios) > 1 else ''}"
        + (f", medians of {results.repeat} runs" if results.repeat > 1 else ""),
        "\n".join(
            [
                f"- Machine: {results.machine}",
                f"- eventsink sources: {results.eventsink}",
                f"- Services: {results.services}",
                "- Each contender ran alone, on its own migrated database (after a CHECKPOINT), in "
                "its own consumer group from the earliest offset, session timeout "
                f"{SESSION_TIMEOUT_MS} ms; {_order(results)}.",
            ]
        ),
    ]
    if results.metric is not None:
        parts.append(report_metric.render(results.metric))
    if results.mixed is not None:
        parts.append(report_mixed.render(results.mixed))
    if results.latency is not None:
        parts.append(report_latency.render(results.latency))
    if results.memory is not None:
        parts.append(report_memory.render(results.memory, results.metric))
    if results.rebalance is not None:
        parts.append(report_rebalance.render(results.rebalance))
    return "\n\n".join(parts) + "\n"


def append(path: Path, text: str) -> None:
    """Append a run's section to the results file (written by hand above the first run)."""
    with path.open("a") as out:
        out.write("\n" + text)
