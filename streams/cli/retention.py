"""`eventsink retention`: idle chat sessions and old soft-deleted analyses, in bounded batches."""

from __future__ import annotations

import click

from sinks.retention import RetentionResult, archive_analyses, counts_of, expire_chat
from streams.cli.console import err, progress_bar, settings


@click.command()
@click.option(
    "--chat-days",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Delete chat sessions (and their messages) idle for more than this many days.",
)
@click.option(
    "--analysis-deleted-days",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Archive analyses soft-deleted more than this many days ago.",
)
@click.option("--batch", type=click.IntRange(min=1), default=1000, show_default=True, help="Rows per transaction.")
@click.option("--dry-run", is_flag=True, help="Count what would go; change nothing.")
def retention(chat_days: float | None, analysis_deleted_days: float | None, batch: int, dry_run: bool) -> None:
    """Apply retention; safe to run while workers are writing."""
    if chat_days is None and analysis_deleted_days is None:
        raise click.UsageError("give --chat-days and/or --analysis-deleted-days")
    s = settings()
    planned = counts_of(s.dsn, chat_days, analysis_deleted_days)
    if dry_run:
        _report("would remove", planned, chat_days, analysis_deleted_days)
        return
    done = RetentionResult()
    with progress_bar() as bar:
        tasks = {}
        if chat_days is not None:
            tasks["chat_sessions"] = bar.add_task("chat sessions", total=planned.sessions)
        if analysis_deleted_days is not None:
            tasks["analysis_requests"] = bar.add_task("analyses", total=planned.analyses)

        def advance(table: str, n: int) -> None:
            bar.advance(tasks[table], n)

        if chat_days is not None:
            r = expire_chat(s.dsn, chat_days, batch=batch, progress=advance)
            done.sessions, done.messages = r.sessions, r.messages
        if analysis_deleted_days is not None:
            done.analyses = archive_analyses(s.dsn, analysis_deleted_days, batch=batch, progress=advance).analyses
    _report("removed", done, chat_days, analysis_deleted_days)


def _report(verb: str, r: RetentionResult, chat_days: float | None, analysis_days: float | None) -> None:
    if chat_days is not None:
        err.print(f"{verb} {r.sessions} chat sessions idle > {chat_days:g} days ({r.messages} messages)")
    if analysis_days is not None:
        err.print(f"{verb} {r.analyses} analyses soft-deleted > {analysis_days:g} days (moved to the archive)")
