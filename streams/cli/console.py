"""What every command shares: settings loading, the two consoles, progress bars, scrubbed output."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

import click
from psycopg.conninfo import conninfo_to_dict
from rich.console import Console

from sinks.secrets import MIN_LENGTH, register_dsn, scrub
from streams import logs
from streams.settings import Settings, SettingsError, deprecated_names, load, unknown_variables

if TYPE_CHECKING:
    from rich.progress import Progress

# Wide when not a terminal, so that tables piped or captured are not folded at 80 columns.
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
out = Console(width=None if sys.stdout.isatty() else 200)


class ScrubbedStream:
    """A text stream that writes through another with every secret scrubbed (`sinks.secrets`).

    The last line of defence of the command line: whatever a command, a library or Python itself
    prints (tables, JSON lines, click's messages, a traceback) passes through `scrub`. Text is
    scrubbed a line at a time, so that a secret written in two pieces of one line is still caught;
    a partial line is written when the stream is flushed (a prompt, a progress bar).
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        complete, newline, self._pending = self._pending.rpartition("\n")
        if newline:
            self.stream.write(scrub(complete + newline))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._pending:
            self.stream.write(scrub(self._pending))
            self._pending = ""
        self.stream.flush()

    @property
    def buffer(self) -> _ScrubbedBinary:
        return _ScrubbedBinary(self)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...: the stream's own
        return getattr(self.stream, name)


class _ScrubbedBinary:
    """The `buffer` of a ScrubbedStream: bytes are decoded, scrubbed and written as text."""

    def __init__(self, text: ScrubbedStream) -> None:
        self.text = text

    def write(self, data: bytes) -> int:
        self.text.write(bytes(data).decode(self.text.encoding or "utf-8", "surrogateescape"))
        return len(data)

    def flush(self) -> None:
        self.text.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.text.stream.buffer, name)


def scrub_output() -> None:
    """Route this process's stdout and stderr through `ScrubbedStream` (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, ScrubbedStream):
            setattr(sys, name, ScrubbedStream(stream))


# The read-only tools' option for a standby (`streams.tools.source`).
READ_DSN_HELP = (
    "Read from this PostgreSQL instead (a standby, or several hosts with target_session_attrs=prefer-standby); "
    "default EVENTSINK_READ_DATABASE_URL, else DATABASE_URL. Prefer the variable: a password here is visible in ps."
)


def dsn_to_read(option: str | None, loaded: Settings) -> str:
    """The DSN a read-only tool reads with: `--read-dsn` when given (its secrets then masked like
    the settings' own), else EVENTSINK_READ_DATABASE_URL, else DATABASE_URL."""
    if option is None:
        return loaded.read_dsn
    register_dsn(option)
    try:
        conninfo_to_dict(option)
    except Exception:
        message = "not a PostgreSQL connection string (a URL or key=value pairs)"
        raise click.BadParameter(message, param_hint="--read-dsn") from None
    return option


class SettingsProblem(click.ClickException):
    """Settings the environment cannot make: a usage error (exit status 2), on one line."""

    exit_code = 2


_warned: set[str] = set()  # what this process already warned about (commands load settings more than once)


def settings() -> Settings:
    try:
        loaded = load()
    except SettingsError as exc:
        raise SettingsProblem(f"invalid settings: {scrub(str(exc))}") from None
    logs.configure(loaded.log_level, loaded.log_format)
    log = logs.get(__name__)
    if "settings" not in _warned:
        _warned.add("settings")
        for old, new in deprecated_names().items():
            log.warning("deprecated setting name", name=old, use=new)
        for name in loaded.short_secrets():
            log.warning(
                "a secret too short to be masked wherever it appears",
                setting=name,
                minimum=MIN_LENGTH,
                why="it is masked where it is labelled as a secret (a password parameter, a URL user info) only",
            )
    return loaded


def warn_unknown_variables() -> None:
    """Once, as a command starts: EVENTSINK_* variables no setting reads, which would otherwise be
    ignored without a word (a misspelt EVENTSINK_BACTH_SIZE leaves the batch size at its default)."""
    unknown = unknown_variables()
    if not unknown or "unknown" in _warned:
        return
    _warned.add("unknown")
    # Logs as the settings will configure them, read leniently: the settings may be invalid.
    level = os.environ.get("EVENTSINK_LOG_LEVEL", "INFO").upper()
    fmt = os.environ.get("EVENTSINK_LOG_FORMAT", "auto").lower()
    logs.configure(
        level if isinstance(logging.getLevelName(level), int) else "INFO",
        fmt if fmt in ("auto", "json", "console") else "auto",
    )
    log = logs.get("streams.settings")
    for name, close in unknown.items():
        log.warning(
            "unknown EVENTSINK_* variable ignored: no setting has this name",
            variable=name,
            did_you_mean=close,
            fix=f"rename it {close}" if close else "see the settings in README.md (Configuration)",
        )


def progress_bar(total: int | None = None) -> Progress:
    """A progress bar on stderr when it is a terminal (silent in pipes and CI logs)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
    )
