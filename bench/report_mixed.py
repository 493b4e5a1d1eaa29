"""The mixed scenario's section: eventsink's workers on metric, chat and analysis topics at once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from bench.contenders import MIXED_CONTENDERS
from bench.measure import Measurement
from bench.mixed import CHAT_TURNS, MixedWorkload
from bench.profile import RATE, Profile
from bench.tables import (
    Column,
    ScenarioResults,
    closing_sections,
    common_columns,
    contender_table,
    median,
    rate_column,
    table,
    verdict_column,
)

Results = ScenarioResults[MixedWorkload]
KINDS = ("metric", "chat", "analysis")


def _done(ms: Sequence[Measurement], w: MixedWorkload) -> str:
    """Median time at which each topic was all applied: "metric / chat / analysis"."""
    cells = []
    for kind in KINDS:
        topic = w.topics[kind]
        seen = [m.topic_done_s[topic] for m in ms if topic in m.topic_done_s]
        cells.append(f"{median(seen):.1f}" if seen else "-")
    return " / ".join(cells)


def columns(w: MixedWorkload) -> list[Column]:
    common = common_columns(w.sent)
    return [
        common["events/s"],
        rate_column("steady events/s", lambda m: m.steady_events_per_s),
        common["first commit s"],
        Column("all applied s: metric / chat / analysis", lambda ms: _done(ms, w)),
        common["total s"],
        common["peak RSS MB"],
        common["CPU µs/event"],
        verdict_column("every table == the load's report"),
    ]


def workload_table(w: MixedWorkload) -> str:
    """Per topic, what was sent and what every run's ledger must count (from the topic)."""
    c, a = w.chat, w.analysis
    finals = Counter(v.state.status for v in w.expected["analysis"].analyses.values())
    details = {
        "metric": f"{w.spec.tenants} tenants",
        "chat": f"{c.conversations:,} conversations of {CHAT_TURNS[0]} to {CHAT_TURNS[1]} turns",
        "analysis": f"{a.analyses:,} analyses, {a.shuffled:,} of them sent out of time order; final status "
        + ", ".join(f"{s} {n:,}" for s, n in sorted(finals.items())),
    }
    counts = {}
    for kind in KINDS:
        ledger = w.expected[kind].ledger
        counts[kind] = (ledger.events, ledger.rows_applied, ledger.duplicates, ledger.superseded)
    rows = [
        [kind, f"`{w.topics[kind]}`", *(f"{n:,}" for n in n4), f"{n4[0] / w.sent:.1%}", details[kind]]
        for kind, n4 in counts.items()
    ]
    header = ["kind", "topic", "records", "unique", "duplicates", "superseded", "share", ""]
    return table(header, [False, False, True, True, True, True, True, False], rows)


# Each kind's own frame (`sinks.writers.staging.StagedWriter.apply`): staging, statements, folding.
WRITERS = {"metric": "MetricWriter.apply (", "chat": "ChatWriter.apply (", "analysis": "AnalysisWriter.apply ("}


def writers_table(profile: Profile, w: MixedWorkload) -> str:
    """CPU in each kind's database writer (inclusive: staging, statements, folding), per record of its topic."""
    rows = []
    for kind, prefix in WRITERS.items():
        samples = sum(n for frame, n in profile.inclusive_samples.items() if frame.startswith(prefix))
        records = w.sent_per_topic[w.topics[kind]]
        rows.append([f"`{prefix.rstrip(' (')}`", f"{samples / RATE / records * 1e6:.1f}", f"{samples / RATE:.2f}"])
    header = ["writer (inclusive)", "µs per record of its topic", "CPU s"]
    return "CPU in each kind's writer, per record of its own topic:\n\n" + table(header, [False, True, True], rows)


def render(results: Results, level: str = "###") -> str:
    w, spec = results.workload, results.workload.spec
    ran = set(results.names)
    parts = [
        f"{level} Mixed scenario: {w.sent:,} records, {spec.partitions} partitions per topic, "
        f"{spec.tenants} tenants, {spec.duplicates:.0%} duplicates, "
        f"{spec.out_of_order:.0%} of analyses shuffled",
        f"Workload (seed {spec.seed}, loaded in {w.load_seconds:.1f} s before any contender started; one set "
        "of tenants keys the three topics; every run's tables and ledger must end with these counts):\n\n"
        + workload_table(w),
        "\n".join(
            [
                *(f"- {name}: {MIXED_CONTENDERS[name].description}" for name in MIXED_CONTENDERS if name in ran),
                "- The reference loop and Quix Streams write metric events only: they run in the metric scenario.",
            ]
        ),
        "events/s = records of the three topics / (the ledger of the group has counted every record of every "
        "topic - process start); steady events/s = records / (that - first row committed); all applied s: when "
        "each topic's ledger sum reached its records; CPU µs/event = CPU time of the processes / records.",
        contender_table(results, columns(w)),
    ]
    per_run = [columns(w)[i] for i in (0, 1, 3, 5)]
    parts += closing_sections(results, per_run, f"{level}# Worker profile, mixed scenario")
    if results.profile is not None:
        parts.append(writers_table(results.profile, w))
    return "\n\n".join(parts)
