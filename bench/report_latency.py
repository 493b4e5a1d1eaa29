"""The latency scenario's section: per contender and rate, percentiles of CreateTime -> commit."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence

from bench.latency import LATENCY_CONTENDERS, ONE_RATE, LatencyResults, LatencyRun, load
from bench.latency_stats import Summary, nearest
from bench.paced import ACK_SAMPLE, LINGER_MS, PRODUCER_NAMES
from bench.tables import table

CORES = os.cpu_count() or 1

GOAL_MS = 300.0
# A light stream (`LatencySpec.low_rate`): p99 below the batch wait of the former default (500 ms:
# records waited for their batch to fill); the default now waits for none.
LOW_RATE_GOAL_MS = 500.0

HEADER = [
    "contender",
    "load",
    "round",
    "asked /s",
    "published /s",
    "records",
    "committed",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "p99 to received_at ms",
    "p99 to ack ms",
    "rows / transaction",
    "CPU µs/record",
    "peak RSS MB",
    "ready s",
    "machine busy",
    "harness µs/record",
    "broker, cores",
    "rest, cores",
]


def _ms(s: Summary | None, field: str) -> str:
    return "-" if s is None else f"{getattr(s, field):,.0f}"


def row(r: LatencyRun) -> list[str]:
    head = [r.contender, load(r.fraction, r.rate), str(r.round), f"{r.rate:,}"]
    if r.published is None:
        return [*head, *(["-"] * (len(HEADER) - len(head) - 1)), "**failed**"]
    p = r.published
    committed = f"{r.committed:,}" if r.missing == 0 else f"**{r.committed:,}** ({r.missing:,} missing)"
    return [
        *head,
        f"{p.achieved:,.0f}",
        f"{p.sent:,}",
        committed,
        *(_ms(r.to_commit, f) for f in ("p50", "p95", "p99", "max")),
        _ms(r.to_received, "p99"),
        _ms(r.to_ack, "p99"),
        f"{r.committed / r.transactions:,.0f}" if r.transactions else "-",
        f"{r.cpu_s / r.committed * 1e6:.0f}" if r.committed else "-",
        f"{r.rss_mb:.0f}",
        f"{r.ready_s:.1f}",
        *_machine(r),
    ]


def _machine(r: LatencyRun) -> list[str]:
    """The machine's share busy, the harness's CPU per record, the broker's cores (when the run
    started it) and what the rest used (PostgreSQL, anything else, and the broker when it is not
    ours) in cores, from the first send to the last row."""
    if r.seconds <= 0:
        return ["-"] * 4
    rest = r.busy_cpu_s - r.cpu_s - r.harness_cpu_s - (r.broker_cpu_s or 0.0)
    return [
        f"{r.busy_cpu_s / (CORES * r.seconds):.0%}",
        f"{r.harness_cpu_s / r.published.sent * 1e6:.0f}" if r.published and r.published.sent else "-",
        "-" if r.broker_cpu_s is None else f"{r.broker_cpu_s / r.seconds:.2f}",
        f"{rest / r.seconds:.2f}",
    ]


def goal(results: LatencyResults) -> str:
    """Issue 21's goals: one worker, default batch settings, p99 <= 300 ms at 50 % of its maximum
    in every round; at a light rate (100 records/s) p99 below 500 ms, the former default batch
    wait. Then the anchor at each load the plain loop ran at (`anchored`)."""
    at = nearest(results.spec.fractions, ONE_RATE)
    mid = [r for r in results.runs if r.contender == "eventsink" and r.fraction == at]
    low = [r for r in results.runs if r.contender == "eventsink" and r.fraction < 0.01]
    lines = [
        _goal(mid, f"eventsink, default batch settings, p99 <= {GOAL_MS:,.0f} ms at {at:.0%} load", GOAL_MS, True),
    ]
    if results.spec.low_rate:  # --low-rate 0: no light run was asked for
        lines.append(
            _goal(
                low,
                f"eventsink, default batch settings, p99 < {LOW_RATE_GOAL_MS:,.0f} ms (the former default batch "
                f"wait) at {results.spec.low_rate:,} records/s",
                LOW_RATE_GOAL_MS,
                False,
            )
        )
    return "\n".join(lines + anchored(results))


def _goal(runs: Sequence[LatencyRun], what: str, limit_ms: float, inclusive: bool) -> str:
    """Met when every round's run is complete and its p99 within the limit."""
    measured = [r for r in runs if r.to_commit is not None]
    if not measured:
        return f"- not measured: {what}"
    details, met = [], len(measured) == len(runs)
    for r in runs:
        if r.to_commit is None:
            details.append(f"round {r.round}: failed")
            continue
        p99 = r.to_commit.p99
        met = met and r.ok and (p99 <= limit_ms if inclusive else p99 < limit_ms)
        detail = f"p50 {r.to_commit.p50:,.0f} ms, p99 {p99:,.0f} ms, max {r.to_commit.max:,.0f} ms"
        detail += "" if r.ok else f", {r.missing:,} records missing"
        details.append(detail if len(runs) == 1 else f"round {r.round}: {detail}")
    return f"- {'met' if met else '**not met**'}: {what} ({'; '.join(details)})"


def _p99s(results: LatencyResults, name: str, at: float) -> dict[int, float]:
    """A contender's p99 at one load, by round, of its complete runs."""
    return {
        r.round: r.to_commit.p99
        for r in results.runs
        if r.contender == name and r.fraction == at and r.ok and r.to_commit is not None
    }


def anchored(results: LatencyResults) -> list[str]:
    """At each load the plain loop ran at: its p99 round by round, and eventsink's p99 over the
    plain loop's of the same round: what of the tail is eventsink's, and what the machine's."""
    lines = []
    for at in results.spec.fractions:
        ours, plain = _p99s(results, "eventsink", at), _p99s(results, "plain", at)
        if not plain:
            continue
        over = sum(p > GOAL_MS for p in plain.values())
        text = (
            f"- anchor: the plain loop at {at:.0%} load, p99 by round: "
            + ", ".join(f"{plain[k]:,.0f} ms" for k in sorted(plain))
            + f" (above {GOAL_MS:,.0f} ms in {over} of {len(plain)})"
        )
        both = sorted(k for k in ours if k in plain and plain[k] > 0)
        if both:
            ratios = [ours[k] / plain[k] for k in both]
            text += (
                "; eventsink's p99 / the plain loop's, by round: "
                + ", ".join(f"{x:.2f}" for x in ratios)
                + f" (median {statistics.median(ratios):.2f})"
            )
        lines.append(text)
    return lines


def clocks(results: LatencyResults) -> str:
    c = results.clock
    measured = (
        ""
        if c is None
        else f" Measured when the scenario started: PostgreSQL's clock - the harness's = {c.offset_ms:+.2f} ms "
        f"(± {c.uncertainty_ms:.2f} ms, half the shortest of 7 round trips)."
    )
    return (
        "Clocks: a record's CreateTime is set by the harness (`time.time()`, in whole milliseconds, "
        "truncated: a latency reads up to 1 ms long) when it hands the record to the producer; the "
        "broker's clock plays no part (CreateTime, not LogAppendTime). committed_at is PostgreSQL's "
        "`clock_timestamp()` when the inserting transaction commits (a deferred constraint trigger, "
        "bench/commit_clock.py), received_at the row's `DEFAULT now()`, the start of that "
        "transaction. With the producer, the broker and PostgreSQL on one host (the services above), "
        f"both are the same system clock.{measured}"
    )


def render(results: LatencyResults, level: str = "###") -> str:
    spec = results.spec
    ran = set(results.names)
    loads = ", ".join(f"{f:.0%}" for f in spec.fractions)
    parts = [
        f"{level} Latency scenario: {loads} of {results.max_rate:,.0f} records/s for {spec.duration_s:.0f} s, "
        f"{spec.partitions} partitions, {spec.tenants} tenants"
        + ("" if results.rounds == 1 else f", {results.rounds} rounds"),
        "\n".join(
            [
                f"- Maximum: {results.max_rate:,.0f} records/s, {results.max_rate_from}.",
                *(
                    []
                    if results.rounds == 1
                    else [
                        f"- Rounds: the whole schedule {results.rounds} times, the contenders' order rotated "
                        "by one each round."
                    ]
                ),
                f"- Load: metric events, no duplicates, published at a fixed rate by {PRODUCER_NAMES[spec.producer]} "
                f"(acks=all, linger {LINGER_MS} ms) after the contender had committed one probe record per "
                "partition, to a topic of its own; the contender ran alone, on its own database.",
                *(
                    f"- {name}: {c.description}"
                    + ("" if c.every_rate else f"; at {nearest(spec.fractions, ONE_RATE):.0%} only")
                    for name, c in LATENCY_CONTENDERS.items()
                    if name in ran
                ),
            ]
        ),
        "Latency = committed_at - CreateTime, per record. received_at: the same from the record's "
        "CreateTime to its row's received_at (the start of its transaction); ack: from CreateTime to the broker's "
        "acknowledgement as the producer got it (the publishing side's share; every "
        f"{ACK_SAMPLE}th record timed). rows / transaction = "
        "the records' rows / the transactions that inserted them; CPU µs/record = the contender's "
        "CPU time from the first send to the last row committed / records; over the same interval, "
        "machine busy = the whole machine's busy CPU time / (cores x seconds), harness µs/record = "
        "the harness's own CPU (its producer's threads included) / records sent, rest = the busy "
        "CPU time left / seconds: PostgreSQL and anything else (broker, cores: the broker's own CPU / seconds, "
        "when the run started it; else the broker is in the rest). committed: rows "
        f"committed within {spec.drain_s:.0f} s of the last send; percentiles are of those.",
        table(HEADER, [False, *([True] * (len(HEADER) - 1))], [row(r) for r in results.runs]),
        clocks(results),
        "Goal of the issue:\n\n" + goal(results),
    ]
    parts += [
        f"{r.contender} at {load(r.fraction, r.rate)}, round {r.round}, failed: {r.error}"
        for r in results.runs
        if r.error
    ]
    return "\n\n".join(parts)
