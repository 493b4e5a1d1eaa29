"""`eventsink retention`: old metric rows, idle chat sessions and old soft-deleted analyses, in
bounded batches."""

from __future__ import annotations

import math
from typing import Any

import click

from sinks.retention import METRICS, RetentionResult, archive_analyses, counts_of, expire_chat, expire_metrics
from streams.cli.confirm import confirm
from streams.cli.console import err, progress_bar, settings


class _Days(click.FloatRange):
    """A finite number of days from 1 to 100 years: below a day, retention would take rows the
    workers are writing now (1e-300 is every row); above, the cut leaves the calendar (1e9, inf)."""

    name = "days"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            days = float(value)
        except (TypeError, ValueError):
            days = math.nan
        if not math.isfinite(days):  # nan would pass FloatRange's comparisons
            self.fail(f"{value!r} is not a number of days: give one from {MIN_DAYS} to {MAX_DAYS}", param, ctx)
        return super().convert(days, param, ctx)


MIN_DAYS, MAX_DAYS = 1, 36500
Days = _Days(min=MIN_DAYS, max=MAX_DAYS)


@click.command()
@click.option(
    "--metrics-days",
    type=Days,
    default=None,
    help="Delete metric rows whose occurred_at is more than this many days ago.",
)
@click.option(
    "--chat-days",
    type=Days,
    default=None,
    help="Delete chat sessions (and their messages) idle for more than this many days.",
)
@click.option(
    "--analysis-deleted-days",
    type=Days,
    default=None,
    help="Archive analyses soft-deleted more than this many days ago.",
)
@click.option("--batch", type=click.IntRange(min=1), default=1000, show_default=True, help="Rows per transaction.")
@click.option("--dry-run", is_flag=True, help="Count what would go; change nothing.")
@click.option("--yes", is_flag=True, help="Remove rows without asking (for scheduled jobs).")
def retention(
    metrics_days: float | None,
    chat_days: float | None,
    analysis_deleted_days: float | None,
    batch: int,
    dry_run: bool,
    yes: bool,
) -> None:
    """Apply retention; safe to run while workers are writing. Days are from 1 to 36500.

    A run that would remove rows asks first, unless --yes; with no terminal to ask, it refuses.
    """
    if metrics_days is None and chat_days is None and analysis_deleted_days is None:
        raise click.UsageError("give --metrics-days, --chat-days and/or --analysis-deleted-days")
    s = settings()
    days = (metrics_days, chat_days, analysis_deleted_days)
    planned = counts_of(s.dsn, chat_days, analysis_deleted_days, metrics_days)
    if dry_run:
        _report("would remove", planned, *days)
        return
    if planned.metrics or planned.sessions or planned.analyses:
        confirm(f"retention would remove {_summary(planned, *days)} from {s.dsn_display}. Go on?", yes)
    done = RetentionResult()
    with progress_bar() as bar:
        tasks = {}
        if metrics_days is not None:
            tasks[METRICS] = bar.add_task("metric rows", total=planned.metrics)
        if chat_days is not None:
            tasks["chat_sessions"] = bar.add_task("chat sessions", total=planned.sessions)
        if analysis_deleted_days is not None:
            tasks["analysis_requests"] = bar.add_task("analyses", total=planned.analyses)

        def advance(table: str, n: int) -> None:
            bar.advance(tasks[table], n)

        if metrics_days is not None:
            r = expire_metrics(s.dsn, metrics_days, batch=batch, progress=advance)
            done.metrics, done.metrics_cut = r.metrics, r.metrics_cut
        if chat_days is not None:
            r = expire_chat(s.dsn, chat_days, batch=batch, progress=advance)
            done.sessions, done.messages = r.sessions, r.messages
        if analysis_deleted_days is not None:
            done.analyses = archive_analyses(s.dsn, analysis_deleted_days, batch=batch, progress=advance).analyses
    _report("removed", done, *days)


def _report(
    verb: str, r: RetentionResult, metrics_days: float | None, chat_days: float | None, analysis_days: float | None
) -> None:
    if metrics_days is not None:
        cut = r.metrics_cut.isoformat() if r.metrics_cut else "?"
        err.print(f"{verb} {r.metrics} metric rows older than {metrics_days:g} days (occurred_at before {cut})")
    if chat_days is not None:
        err.print(f"{verb} {r.sessions} chat sessions idle > {chat_days:g} days ({r.messages} messages)")
    if analysis_days is not None:
        err.print(f"{verb} {r.analyses} analyses soft-deleted > {analysis_days:g} days (moved to the archive)")


def _summary(
    r: RetentionResult, metrics_days: float | None, chat_days: float | None, analysis_days: float | None
) -> str:
    parts = []
    if metrics_days is not None:
        parts.append(f"{r.metrics:,} metric rows older than {metrics_days:g} days")
    if chat_days is not None:
        parts.append(f"{r.sessions:,} chat sessions idle > {chat_days:g} days ({r.messages:,} messages)")
    if analysis_days is not None:
        parts.append(f"{r.analyses:,} analyses soft-deleted > {analysis_days:g} days")
    return ", ".join(parts)
