"""The rebalance scenario's section: per run and event, the longest intervals without a commit."""

from __future__ import annotations

from bench.latency_stats import Summary
from bench.paced import LINGER_MS, PRODUCER_NAMES
from bench.rebalance import Event, Gap, RebalanceResults, RebalanceRun
from bench.tables import table

BAR_MS = 2000.0

EVENT_HEADER = [
    "run",
    "event",
    "at s",
    "B started after ms",
    "A's last commit after ms",
    "A assigned after ms",
    "A sought after ms",
    "B assigned after ms",
    "unmoved",
    "longest gap unmoved ms",
    "moved",
    "longest gap moved ms",
    "handover ms",
]
RUN_HEADER = [
    "run",
    "asked /s",
    "published /s",
    "records",
    "committed",
    "rows / distinct",
    "p50 ms",
    "p99 ms",
    "max ms",
    "longest gap, A alone ms",
    "B's stop s",
    "ready s",
    "commits: unmapped / off-assignment",
]


def _parts(p: frozenset[int]) -> str:
    return ",".join(str(x) for x in sorted(p)) or "-"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _gap(g: Gap | None, origin_ms: float) -> str:
    if g is None:
        return "-"
    return f"{g.ms:,.0f} (p{g.partition}, {(g.start_ms - origin_ms) / 1000:.1f}→{(g.end_ms - origin_ms) / 1000:.1f} s)"


def event_row(n: int, r: RebalanceRun, e: Event) -> list[str]:
    return [
        str(n),
        "B joins" if e.name == "join" else "B leaves (SIGTERM)",
        f"{(e.at_ms - r.first_send_ms) / 1000:.1f}",
        _ms(e.b_started_ms),
        _ms(e.a_last_ms),
        _ms(e.assigned_ms),
        _ms(e.sought_ms),
        _ms(e.b_assigned_ms),
        _parts(e.unmoved),
        _gap(e.unmoved_gap, r.first_send_ms),
        _parts(e.moved),
        _gap(e.moved_gap, r.first_send_ms),
        _ms(e.handover_ms),
    ]


def _s(s: Summary | None, field: str) -> str:
    return "-" if s is None else f"{getattr(s, field):,.0f}"


def run_row(n: int, r: RebalanceRun) -> list[str]:
    head = [str(n), f"{r.spec.rate:,}"]
    if r.published is None:
        return [*head, *(["-"] * (len(RUN_HEADER) - len(head) - 1)), "**failed**"]
    p = r.published
    committed = f"{r.committed:,}" if r.missing == 0 else f"**{r.committed:,}** ({r.missing:,} missing)"
    expected = p.sent + r.spec.partitions
    rows = f"{r.rows:,} / {r.distinct:,}"
    if not (r.rows == r.distinct == expected):
        rows = f"**{rows}** (expected {expected:,})"
    return [
        *head,
        f"{p.achieved:,.0f}",
        f"{p.sent:,}",
        committed,
        rows,
        _s(r.to_commit, "p50"),
        _s(r.to_commit, "p99"),
        _s(r.to_commit, "max"),
        _gap(r.baseline_gap, r.first_send_ms),
        f"{r.b_stop_s:.1f}",
        f"{r.ready_s:.1f}",
        f"{r.unknown_commits} / {r.foreign_commits}",
    ]


def _event_detail(e: Event) -> str:
    """The longest gap, and how much of it came after A's new assignment: the worker's own part
    (positioning, fetch, first batch); before it, the group's rejoin (Tansu holds every JoinGroup
    3 s)."""
    if e.unmoved_gap is None:
        return f"{e.name} -"
    text = f"{e.name} {e.unmoved_gap.ms:,.0f} ms"
    if e.assigned_ms is not None:
        assigned = e.at_ms + e.assigned_ms
        start, end = e.unmoved_gap.start_ms - assigned, e.unmoved_gap.end_ms - assigned
        if start < 0 < end:
            text += f" ({end:,.0f} ms of it after A's new assignment)"
        else:  # reading through the rebalance: the longest gap need not span the assignment
            text += f" (from {start:,.0f} to {end:,.0f} ms after A's new assignment)"
    return text


def bar(results: RebalanceResults) -> str:
    """The issue's bar: on the partitions that did not move, no interval without a commit over 2 s."""
    what = f"rebalance: no commit gap > {BAR_MS / 1000:.0f} s on partitions that did not move"
    lines = []
    for n, r in enumerate(results.runs, start=1):
        if r.error or not r.events:
            lines.append(f"- not measured (run {n} failed): {what}")
            continue
        worst = [e.unmoved_gap.ms for e in r.events if e.unmoved_gap is not None]
        if not worst:
            lines.append(f"- not measured (run {n}: no partition stayed with A): {what}")
            continue
        met = r.ok and max(worst) <= BAR_MS
        detail = ", ".join(_event_detail(e) for e in r.events)
        if not r.exact:
            detail += "; rows lost or duplicated"
        lines.append(f"- {'met' if met else '**not met**'} (run {n}): {what} ({detail})")
    return "\n".join(lines)


def render(results: RebalanceResults, level: str = "###") -> str:
    spec = results.runs[0].spec
    parts = [
        f"{level} Rebalance scenario: {spec.rate:,} records/s for {spec.duration_s:.0f} s, B joins at "
        f"{spec.join_s:.0f} s and leaves at {spec.leave_s:.0f} s, {spec.partitions} partitions",
        "\n".join(
            [
                f"- Rate: {spec.rate:,} records/s, {spec.rate_from}.",
                f"- Workers: {results.worker}; session timeout {results.session_timeout_ms:,} ms (heartbeat every "
                f"{max(500, results.session_timeout_ms // 5):,} ms); eager rebalancing (aiokafka, Faust: every "
                "member gives up every partition at each rebalance).",
                "- Load: metric events, no duplicates, published at a fixed rate by "
                f"{PRODUCER_NAMES[spec.producer]} (acks=all, linger {LINGER_MS} ms) after A had committed one probe "
                "record per partition, to a topic of its own, on a database of its own.",
            ]
        ),
        "A gap is the interval between two successive commits of one partition (the ledger clock: "
        "`clock_timestamp()` at COMMIT of each transaction that advanced the partition's ledger row); an event's "
        "gaps are those that end after it (for the join, no later than the leave), counted whole; the longest is "
        "given with its partition and bounds (s after the first send). unmoved: the partitions in "
        "A's last assignment before the event and in its first after (its `partitions assigned` log lines); moved: "
        "those that went to B (join) or came back from B (leave). From the event (B's spawn, B's SIGTERM) to: "
        "B started, B's `worker starting` line (interpreter up, imports done); A's last commit, the last commit "
        "A made before its next assignment (without reading through the rebalance, about when it learnt of the "
        "rebalance, at a heartbeat, and gave up every partition: eager rebalancing; reading through it, "
        "`EVENTSINK_READ_DURING_REBALANCE`, up to the assignment); A/B assigned, that worker's first "
        "`partitions assigned` line after it (the group's join and sync done, Faust's on_partitions_assigned "
        "starting); A sought, A's `sought to the ledger` after that assignment (the dedupe table's changelog "
        "read, positions taken from the ledger: fetching resumes). handover: join, from B's spawn to B's first commit; "
        "leave, from B's SIGTERM to A's first commit on the partitions B had. Longest gap, A alone: every partition, "
        "from 2 s after the first send to B's spawn (the steady state). Latency: CreateTime → the row's commit, "
        "every record. commits unmapped: connections the harness did not see (worker unknown); off-assignment: "
        "commits by a worker on a partition its last logged assignment did not hold (a batch read through the "
        "rebalance that commits after the new assignment moved its partition: harmless, the ledger skips in "
        "the next owner's batch what it applied).",
        table(
            EVENT_HEADER,
            [False, False, *([True] * (len(EVENT_HEADER) - 2))],
            [event_row(n, r, e) for n, r in enumerate(results.runs, 1) for e in r.events],
        ),
        table(
            RUN_HEADER,
            [False, *([True] * (len(RUN_HEADER) - 1))],
            [run_row(n, r) for n, r in enumerate(results.runs, 1)],
        ),
        "Goal of the issue:\n\n" + bar(results),
    ]
    parts += [f"Run {n} failed: {r.error}" for n, r in enumerate(results.runs, 1) if r.error]
    parts += [f"Run {n} logs: {', '.join(r.logs)}" for n, r in enumerate(results.runs, 1) if r.logs]
    return "\n\n".join(parts)
