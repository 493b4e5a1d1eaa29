"""The `eventsink` command line."""

from __future__ import annotations

import importlib
import os
import sys

import click
from rich.console import Console
from rich.markup import escape

from sinks.secrets import scrub
from streams.cli.console import err, scrub_output, settings, warn_unknown_variables
from streams.settings import SettingsError

# Exit statuses, the same for every command.
DONE, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130


# The commands of other modules, by name: each module is imported when its command is invoked
# (or listed, by `--help`), so that a command, `worker` first, starts without importing what only
# the others use (rich's progress bars, pg_dump's handling, the producers, the readers).
LAZY_COMMANDS = {
    "backup": ("streams.cli.backup", "backup"),
    "chat": ("streams.cli.chat", "chat"),
    "dlq": ("streams.cli.dlq", "dlq"),
    "lag": ("streams.cli.lag", "lag"),
    "ledger": ("streams.cli.ledger", "ledger_command"),
    "produce": ("streams.cli.produce", "produce"),
    "restore": ("streams.cli.backup", "restore"),
    "retention": ("streams.cli.retention", "retention"),
    "schema": ("streams.cli.schema", "schema"),
    "tail": ("streams.cli.tail", "tail_command"),
    "topics": ("streams.cli.topics", "topics"),
    "verify": ("streams.cli.verify", "verify"),
}


class LazyGroup(click.Group):
    """A group whose `LAZY_COMMANDS` are imported and added on first use (click's documented
    pattern for lazily loaded subcommands)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            module, attribute = LAZY_COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="eventsink")
def cli() -> None:
    """eventsink: Kafka metric, chat and analysis events into PostgreSQL, exactly once.

    Settings come from environment variables: KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL and
    EVENTSINK_* (see README).
    """


@cli.command()
@click.option("--status", "show_status", is_flag=True, help="List applied and pending migrations.")
@click.option("--to", "target", type=int, default=None, help="Apply up to this version only.")
@click.option(
    "--down-to",
    type=int,
    default=None,
    help="Undo applied migrations above this version (asks first if the tables it drops hold rows).",
)
@click.option("--dry-run", is_flag=True, help="With --down-to: list what would be undone and dropped; change nothing.")
@click.option("--yes", is_flag=True, help="With --down-to: drop tables that hold rows without asking.")
def migrate(show_status: bool, target: int | None, down_to: int | None, dry_run: bool, yes: bool) -> None:
    """Apply the database migrations (safe to run twice, and concurrently)."""
    from rich.table import Table

    from sinks import migrate as migrations
    from streams.cli import names
    from streams.cli.console import out

    if target is not None:
        names.migration_version(target, "--to")
    if down_to is not None:
        names.migration_version(down_to, "--down-to", none_is_valid=True)
    s = settings()
    if show_status:
        table = Table("version", "name", "applied at", "reversible")
        for st in migrations.status(s.dsn):
            applied = str(st.applied_at or "pending")
            table.add_row(f"{st.version:04d}", st.name, applied, "yes" if st.reversible else "no")
        out.print(table)
        return
    if down_to is not None:
        _migrate_down(s.dsn, s.dsn_display, down_to, dry_run=dry_run, yes=yes)
        return
    if dry_run or yes:
        raise click.UsageError("--dry-run and --yes go with --down-to")
    if target is not None:
        at = migrations.current(s.dsn)
        if at > target:
            raise click.UsageError(
                f"database {s.dsn_display} is at migration {at}, past {target}: to go back, run "
                f"`eventsink migrate --down-to {target}` (it drops what the later migrations hold)"
            )
    applied = migrations.migrate(s.dsn, target)
    listed = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
    err.print(
        f"database {s.dsn_display}: applied {len(applied)} migration(s)"
        + (f": {listed}" if applied else " (up to date)")
    )


def _migrate_down(dsn: str, display: str, down_to: int, *, dry_run: bool, yes: bool) -> None:
    """Roll back above `down_to`: what it undoes and drops is shown first (and is all a dry run
    does); tables that hold rows go only with --yes or a person's yes at a terminal."""
    from sinks import migrate as migrations
    from streams.cli.confirm import confirm

    plan = migrations.plan_rollback(dsn, down_to)
    listed = ", ".join(f"{m.version:04d}_{m.name}" for m in plan.migrations) or "-"
    dropped = ", ".join(f"{t} ({n:,} rows)" for t, n in plan.dropped.items()) or "none"
    if dry_run:
        err.print(
            f"database {display}: would roll back {len(plan.migrations)} migration(s): {listed}; "
            f"would drop tables: {dropped}",
            highlight=False,
            soft_wrap=True,
        )
        return
    filled = {t: n for t, n in plan.dropped.items() if n}
    if filled:
        held = ", ".join(f"{t} ({n:,} rows)" for t, n in filled.items())
        confirm(
            f"database {display}: rolling back to migration {down_to} drops tables that hold rows: {held}. "
            "Back them up first (`eventsink backup`). Drop them?",
            yes,
        )
    undone = migrations.rollback(dsn, down_to)
    listed = ", ".join(f"{m.version:04d}_{m.name}" for m in undone) or "-"
    # The record of what went: on stderr, and in the logs of whoever ran it.
    err.print(
        f"database {display}: rolled back {len(undone)} migration(s): {listed}; dropped tables: {dropped}",
        highlight=False,
        soft_wrap=True,
    )


def _cpus() -> int:
    """The CPUs this process may run on (a container's share where the OS says it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# Worker processes per CPU a host may run: past it they only compete for the cores (999 on 2 cores
# took the machine down: out of memory, and 9 minutes to stop). More workers: more hosts.
PROCESSES_PER_CPU = 4


@cli.command()
@click.option(
    "--processes",
    "-p",
    type=click.IntRange(min=1, max=PROCESSES_PER_CPU * _cpus()),
    default=1,
    show_default=True,
    help=f"Worker processes to run and supervise on this host (web ports from EVENTSINK_WEB_PORT up); "
    f"at most {PROCESSES_PER_CPU} per CPU.",
)
def worker(processes: int) -> None:
    """Run a worker: every agent of every event kind, until SIGTERM or Ctrl-C drains it."""
    if processes > 1:
        from streams.worker import supervisor

        sys.exit(supervisor.run(settings(), processes))
    from streams.worker import run as worker_mod

    worker_mod.run(settings())


@cli.command()
@click.option(
    "--count",
    "-n",
    type=click.IntRange(min=1),
    default=20_000,
    show_default=True,
    help="Metric records in the sample workload (chat and analysis come in proportion).",
)
@click.option("--tenants", "-t", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--keep-running", is_flag=True, help="Leave the worker running after the summary, until Ctrl-C.")
def run(count: int, tenants: int, keep_running: bool) -> None:
    """Start what is missing (broker, database), run a worker on a sample workload, summarise."""
    from streams.dev import run as demo

    demo.main(count=count, tenants=tenants, keep_running=keep_running)


def _database_named() -> str:
    """The database DATABASE_URL names, as host:port/database (no credentials), and the one
    EVENTSINK_READ_DATABASE_URL names when it is another; or a word for them."""

    try:
        from sinks.dsn import server_and_database
        from streams.settings import load

        s = load()
        write, read = server_and_database(s.dsn), server_and_database(s.read_dsn)
    except Exception:
        return "DATABASE_URL names"
    return write if read == write else f"{write} (or {read}, for a command that reads a standby)"


def explain(exc: BaseException) -> tuple[str, str]:
    """What failed, once (an exception's text often repeats its class name), scrubbed; and what to
    do: our own fixed words, printed as they are (scrubbed, `password` in them would be masked for
    a password holding that word, telling so)."""
    text = " ".join(scrub(str(exc)).split())  # one line: libpq's messages span several
    name = type(exc).__name__
    what = text if text.startswith(name) else f"{name}: {text}" if text else name
    from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
    from psycopg import OperationalError
    from psycopg.errors import InvalidSchemaName, UndefinedTable

    servers = scrub(os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092 (the default)"))
    if isinstance(exc, KafkaTimeoutError):
        # Raised bare (no text) when the broker stopped answering a send or a request.
        return what, (
            f"the Kafka broker at {servers} did not answer in time (stopped, overloaded or cut off); "
            "check it, then run the command again"
        )
    if isinstance(exc, KafkaConnectionError) or (isinstance(exc, KafkaError) and "bootstrap" in text):
        return what, (
            f"no Kafka broker answered at {servers}; start it, or set KAFKA_BOOTSTRAP_SERVERS (and "
            "EVENTSINK_KAFKA_SECURITY_PROTOCOL) to where it listens"
        )
    if isinstance(exc, UndefinedTable | InvalidSchemaName) and "eventsink." in text:
        # A database eventsink never migrated: a new one, or DATABASE_URL naming the wrong one.
        return what, (
            f"the database {_database_named()} has no eventsink tables: check that DATABASE_URL (or "
            "EVENTSINK_READ_DATABASE_URL for verify and chat history) names the database the workers write to, "
            "or create them there with `eventsink migrate`"
        )
    if isinstance(exc, OperationalError):
        return what, (
            "check DATABASE_URL (host, port, database, user, password, sslmode), or EVENTSINK_READ_DATABASE_URL "
            "for a command that reads a standby, and that PostgreSQL is running and reachable from here"
        )
    return what, ""


def main() -> None:
    """Exit statuses: 0 done, 1 failed, 2 usage (settings included), 130 interrupted (Ctrl-C)."""
    scrub_output()
    warn_unknown_variables()
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort as exc:  # click's form of Ctrl-C (and of EOF at a prompt)
        err.print("interrupted" if isinstance(exc.__context__, KeyboardInterrupt) else "aborted")
        sys.exit(INTERRUPTED)
    except click.ClickException as exc:
        fail(scrub(exc.format_message()), status=exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(INTERRUPTED)
    except SettingsError as exc:  # found after loading (a client certificate that does not load)
        fail(f"invalid settings: {scrub(str(exc))}", status=USAGE)
    except Exception as exc:  # last resort: never print a DSN or password
        fail(*explain(exc), status=FAILED)
    sys.exit(code if isinstance(code, int) else DONE)


def fail(message: str, hint: str = "", *, status: int) -> None:
    """One line on stderr (never folded: scripts grep it), then exit. `message` is scrubbed (again,
    by the output guard); `hint`, our own words and values already scrubbed, is not: the line goes
    past the guard, scrubbed here but for the hint."""
    if not hint:
        err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(status)
    err.file.flush()
    raw = Console(file=getattr(sys.stderr, "stream", sys.stderr), width=err.width, color_system=err.color_system)
    raw.print(f"[red]error:[/red] {escape(scrub(message))}: {escape(hint)}", highlight=False, soft_wrap=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
