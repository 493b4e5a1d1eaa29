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
    difference,
    median,
    rate_column,
    ratio,
    times,
    verdict_column,
)
from bench.workload import Workload

QUIX_BAR = 2.0  # one worker's events/s / Quix's
PLAIN_BAR = 0.6  # one worker's steady rows/s / the plain loop's
FIRST_COMMIT_BAR_S = 1.0  # one worker's first commit s - the plain loop's
TWO_QUIX_BAR = 2.5  # two workers' events/s / Quix's
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
        *(Column(f"/ {base}", partial(_ratio, results, base)) for base in ("quix", "reference", "plain")),
    ]


def at_least(value: float | None, bar: float) -> bool:
    return value is not None and value >= bar


def _ratio(results: Results, base: str, ms: Sequence[Measurement]) -> str:
    return times(ratio(results.runs, ms[0].contender, base))


def bar(results: Results) -> str:
    """Issue 21's bar, each taken per round and its median: one worker at least 2.0x Quix Streams
    end to end (events/s), steady rows/s at least 0.6x the plain loop's, its first committed row no
    more than 1.0 s after the plain loop's; two worker processes at least 2.5x Quix; one worker's
    peak RSS at most 250 MB. With `--baseline`, the ratio to Quix of the baseline revision's worker
    beside the tree's."""
    runs = results.runs
    vs_quix = ratio(runs, "eventsink", "quix")
    steady_vs_plain = ratio(runs, "eventsink", "plain", key=lambda m: m.steady_rows_per_s)
    first_after_plain = difference(runs, "eventsink", "plain", key=lambda m: m.first_commit_s)
    two_vs_quix = ratio(runs, "eventsink2", "quix")
    one = [m for m in results.of("eventsink") if m.ok]
    peak = median([sum(m.rss_mb) for m in one]) if one else None
    items = [
        (f"one worker >= {QUIX_BAR}x Quix events/s", at_least(vs_quix, QUIX_BAR), times(vs_quix)),
        (
            f"one worker steady rows/s >= {PLAIN_BAR}x the plain loop's",
            at_least(steady_vs_plain, PLAIN_BAR),
            times(steady_vs_plain),
        ),
        (
            f"one worker's first commit <= {FIRST_COMMIT_BAR_S:.1f} s after the plain loop's",
            first_after_plain is not None and first_after_plain <= FIRST_COMMIT_BAR_S,
            "-" if first_after_plain is None else f"{first_after_plain:+.2f} s",
        ),
        (f"two worker processes >= {TWO_QUIX_BAR}x Quix", at_least(two_vs_quix, TWO_QUIX_BAR), times(two_vs_quix)),
        (
            f"one worker peak RSS <= {RSS_BAR_MB} MB",
            peak is not None and peak <= RSS_BAR_MB,
            "-" if peak is None else f"{peak:.0f} MB",
        ),
    ]
    lines = [f"- {'met' if ok else '**not met**'}: {what} ({value})" for what, ok, value in items if value != "-"]
    lines += [f"- not measured: {what}" for what, _, value in items if value == "-"]
    vs_reference = ratio(runs, "eventsink", "reference")
    if vs_reference is not None:
        lines.append(f"- beyond the bar: one worker / the reference loop (same validation) = {times(vs_reference)}")
    vs_tuned = ratio(runs, "eventsink", "quix-1s")
    if vs_tuned is not None:
        lines.append(f"- beyond the bar: one worker / Quix with 1 s commits = {times(vs_tuned)}")
    base_vs_quix = ratio(runs, "baseline", "quix")
    if base_vs_quix is not None:
        lines.append(
            f"- baseline revision's worker / Quix = {times(base_vs_quix)}, this tree's = {times(vs_quix)}; "
            f"this tree / baseline = {times(ratio(runs, 'eventsink', 'baseline'))}"
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
