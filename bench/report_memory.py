"""The memory scenario's section: one worker's peak RSS on a backlog of 64 KiB chat messages."""

from __future__ import annotations

from bench import report_metric
from bench.memory import CONTENDERS, RSS_TARGET_MB, MemoryRun, Results
from bench.tables import median, table


def _cell(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def _row(r: MemoryRun, value_bytes: float) -> list[str]:
    mb_s = None if r.rate is None else r.rate * value_bytes / 1e6
    return [
        r.spec.name,
        f"{r.spec.budget_bytes / 2**20:.0f} MiB",
        f"{r.spec.delay_s * 1000:.0f}",
        f"{r.events:,}",
        f"{r.seconds:.1f}",
        _cell(r.first_commit_s, ".1f"),
        _cell(r.rate),
        _cell(mb_s, ".1f"),
        f"{r.peak_rss_mb:.0f}",
        _cell(r.steady_rss_mb),
        f"{r.cpu_s:.1f}",
        "**failed**" if r.error else (r.check.summary() if r.check else "-"),
    ]


def targets(results: Results, metric: report_metric.Results | None) -> str:
    """Issue 12: under 400 MB with 64 KiB messages and a database 10x slower; the metric
    scenario's peak under 250 MB (measured there)."""
    direct, slow, small = (results.of(n) for n in ("direct", "slow", "slow, small budget"))
    lines = []
    for r in (slow, small):
        if r is not None and not r.error:
            met = "met" if r.peak_rss_mb < RSS_TARGET_MB else "**not met**"
            lines.append(
                f"- {met}: peak RSS < {RSS_TARGET_MB} MB with the slow database, run `{r.spec.name}` "
                f"(budget {r.spec.budget_bytes / 2**20:.0f} MiB): {r.peak_rss_mb:.0f} MB"
            )
    if direct is not None and slow is not None and direct.rate and slow.rate:
        factor = direct.rate / slow.rate
        enough = "" if factor >= 5 else " (**less than the 10x asked**: raise --db-delay-ms)"
        lines.append(
            f"- the slow database: {slow.rate:,.0f} events/s against {direct.rate:,.0f} without the proxy, "
            f"{factor:.1f}x slower{enough}"
        )
    ok_metric = [m for m in metric.of("eventsink") if m.ok] if metric is not None else []
    if ok_metric:
        peak = median([sum(m.rss_mb) for m in ok_metric])
        met = "met" if peak < report_metric.RSS_BAR_MB else "**not met**"
        lines.append(
            f"- {met}: peak RSS < {report_metric.RSS_BAR_MB} MB on the metric scenario (this run, one "
            f"worker, median): {peak:.0f} MB"
        )
    else:
        lines.append(
            f"- peak RSS < {report_metric.RSS_BAR_MB} MB on the metric scenario: not measured in this run; "
            "read the metric scenario's bar (one worker peak RSS) in the last section that has it"
        )
    return "\n".join(lines)


def render(results: Results, metric: report_metric.Results | None = None, level: str = "###") -> str:
    backlog = results.backlog
    spec, report = backlog.spec, backlog.report
    per_record = backlog.value_bytes / max(1, backlog.sent)
    parts = [
        f"{level} Memory scenario: {backlog.sent:,} chat records of {spec.content_bytes:,}-byte content, "
        f"{spec.partitions} partitions, a database made slow",
        "\n".join(
            [
                f"- Workload: {backlog.sent:,} records on `{backlog.topic}` (seed {spec.seed}, "
                f"{spec.conversations():,} conversations of {spec.tenants} tenants): {report.unique:,} unique "
                f"messages, {report.duplicates:,} re-sends; {backlog.value_bytes / 1e6:,.0f} MB of values "
                f"({per_record:,.0f} bytes each), loaded in {backlog.load_seconds:.1f} s",
                f"- Worker: {CONTENDERS['eventsink']}, its defaults but EVENTSINK_BUFFER_MAX_BYTES; each run "
                "on a fresh database and consumer group, from the earliest offset, until the ledger counts "
                f"every record or {spec.seconds:.0f} s have passed since the spawn.",
                "- Slow database: the worker's DATABASE_URL goes through a TCP proxy in the harness "
                "(tests/proxy.py) that waits the delay before forwarding each chunk (up to 64 KiB), "
                "either way.",
            ]
        ),
        "events/s = the ledger's events between the first and the last poll that saw a commit, per "
        "second; MB/s = the same in record values; peak RSS = the larger of psutil samples (every "
        "0.25 s) and VmHWM read before SIGTERM; RSS, 2nd half = the median sample over the second "
        "half of the run; check = the database against the prefix the ledger says was applied "
        "(bench/verify_memory.py), not the full oracle when a run is cut short.",
        table(
            [
                "run",
                "budget",
                "delay ms",
                "records applied",
                "s",
                "first commit s",
                "events/s",
                "MB/s",
                "peak RSS MB",
                "RSS, 2nd half MB",
                "CPU s",
                "check",
            ],
            [False, True, True, True, True, True, True, True, True, True, True, False],
            [_row(r, per_record) for r in results.runs],
        ),
        "Targets of the issue:\n\n" + targets(results, metric),
    ]
    parts += [f"memory {r.spec.name} failed: {r.error}" for r in results.runs if r.error]
    return "\n\n".join(parts)
