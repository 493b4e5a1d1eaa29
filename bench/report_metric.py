"""The metric scenario's section: every contender on one metric topic, and the issue's bar."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from bench.contenders import CONTENDERS
from bench.measure import Measurement
from bench.tables import (
    Column,
    ScenarioResults,
    closing_sections,
    common_columns,
    contender_table,
    median,
    rate_column,
    ratio,
    times,
    verdict_column,
)
from bench.workload import Workload

RSS_BAR_MB = 250
Results = ScenarioResults[Workload]


def columns(results: Results) -> list[Column]:
    common = common_columns(results.workload.sent)
    return [
        common["events/s"],
        rate_column("steady rows/s", lambda m: m.steady_rows_per_s),
        common["first commit s"],
        common["total s"],
        common["peak RSS MB"],
        common["CPU µs/event"],
        verdict_column("rows == unique"),
        *(Column(f"/ {base}", partial(_ratio, results, base)) for base in ("quix", "reference")),
    ]


def _ratio(results: Results, base: str, ms: Sequence[Measurement]) -> str:
    return times(ratio(results.runs, ms[0].contender, base))


def bar(results: Results) -> str:
    """The performance issue's bar, ratios taken per round and their median: one worker at least
    1.5x Quix Streams and 0.6x the framework-free reference loop, two worker processes at least
    2.0x Quix, one worker's peak RSS under 250 MB. With `--baseline`, the ratio to Quix of the
    baseline revision's worker beside the tree's (the restructuring's "same ratio")."""
    vs_quix = ratio(results.runs, "eventsink", "quix")
    vs_reference = ratio(results.runs, "eventsink", "reference")
    two_vs_quix = ratio(results.runs, "eventsink2", "quix")
    one = [m for m in results.of("eventsink") if m.ok]
    peak = median([sum(m.rss_mb) for m in one]) if one else None
    items = [
        ("one worker >= 1.5x Quix events/s", vs_quix is not None and vs_quix >= 1.5, times(vs_quix)),
        ("one worker >= 0.6x the reference loop", (vs_reference or 0) >= 0.6, times(vs_reference)),
        ("two worker processes >= 2.0x Quix", two_vs_quix is not None and two_vs_quix >= 2.0, times(two_vs_quix)),
        (
            f"one worker peak RSS < {RSS_BAR_MB} MB",
            peak is not None and peak < RSS_BAR_MB,
            "-" if peak is None else f"{peak:.0f} MB",
        ),
    ]
    lines = [f"- {'met' if ok else '**not met**'}: {what} ({value})" for what, ok, value in items if value != "-"]
    lines += [f"- not measured: {what}" for what, _, value in items if value == "-"]
    vs_tuned = ratio(results.runs, "eventsink", "quix-1s")
    if vs_tuned is not None:
        lines.append(f"- beyond the bar: one worker / Quix with 1 s commits = {times(vs_tuned)}")
    base_vs_quix = ratio(results.runs, "baseline", "quix")
    if base_vs_quix is not None:
        lines.append(
            f"- baseline revision's worker / Quix = {times(base_vs_quix)}, this tree's = {times(vs_quix)}; "
            f"this tree / baseline = {times(ratio(results.runs, 'eventsink', 'baseline'))}"
        )
    return "\n".join(lines)


def _workload(w: Workload) -> str:
    per_tenant = sorted(w.unique_per_tenant.values())
    return (
        f"{w.sent:,} records on `{w.topic}` (seed {w.spec.seed}, loaded in {w.load_seconds:.1f} s "
        f"before any contender started): {w.unique:,} unique events, {w.duplicates:,} duplicates; "
        f"unique events per tenant, sorted: " + ", ".join(f"{n:,}" for n in per_tenant)
    )


def render(results: Results, level: str = "###") -> str:
    spec = results.workload.spec
    ran = set(results.names)
    parts = [
        f"{level} Metric scenario: {spec.events:,} metric events, {spec.partitions} partitions, "
        f"{spec.tenants} tenants, {spec.duplicates:.0%} duplicates",
        "\n".join(
            [
                f"- Workload: {_workload(results.workload)}",
                *(f"- {name}: {CONTENDERS[name].description}" for name in CONTENDERS if name in ran),
                *(["- baseline: one worker at the `--baseline` revision (see sources)"] * ("baseline" in ran)),
            ]
        ),
        "events/s = records / (last row committed - process start); steady rows/s = rows / "
        "(last row committed - first row committed); CPU µs/event = CPU time of the contender's "
        "processes, start-up included, / records.",
        contender_table(results, columns(results)),
        "Bar of the issue:\n\n" + bar(results),
    ]
    per_run = [columns(results)[i] for i in (0, 1, 4)]
    parts += closing_sections(results, per_run, f"{level}# Worker profile, metric scenario")
    return "\n\n".join(parts)
