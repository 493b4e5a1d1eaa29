"""What every command shares: settings loading, the two consoles, progress bars."""

from __future__ import annotations

import sys

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from sinks.dsn import scrub
from streams import logs
from streams.settings import Settings, SettingsError, deprecated_names, load

# Wide when not a terminal, so that tables piped or captured are not folded at 80 columns.
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
out = Console(width=None if sys.stdout.isatty() else 200)


def settings() -> Settings:
    try:
        loaded = load()
    except SettingsError as exc:
        raise click.ClickException(f"invalid settings: {scrub(str(exc))}") from None
    logs.configure(loaded.log_level, loaded.log_format)
    for old, new in deprecated_names().items():
        logs.get(__name__).warning("deprecated setting name", name=old, use=new)
    return loaded


def progress_bar(total: int | None = None) -> Progress:
    """A progress bar on stderr when it is a terminal (silent in pipes and CI logs)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
    )
