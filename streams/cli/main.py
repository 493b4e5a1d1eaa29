"""The `eventsink` command line."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from sinks import migrate as migrations
from sinks.secrets import scrub
from streams.cli import names
from streams.cli.backup import backup, restore
from streams.cli.chat import chat
from streams.cli.console import err, out, scrub_output, settings
from streams.cli.dlq import dlq
from streams.cli.lag import lag
from streams.cli.ledger import ledger_command
from streams.cli.produce import produce
from streams.cli.retention import retention
from streams.cli.schema import schema
from streams.cli.tail import tail_command
from streams.cli.topics import topics
from streams.cli.verify import verify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="eventsink")
def cli() -> None:
    """eventsink: Kafka metric, chat and analysis events into PostgreSQL, exactly once.

    Settings come from environment variables: KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL and
    EVENTSINK_* (see README).
    """


@cli.command()
@click.option("--status", "show_status", is_flag=True, help="List applied and pending migrations.")
@click.option("--to", "target", type=int, default=None, help="Apply up to this version only.")
@click.option("--down-to", type=int, default=None, help="Undo applied migrations above this version.")
def migrate(show_status: bool, target: int | None, down_to: int | None) -> None:
    """Apply the database migrations (safe to run twice, and concurrently)."""
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
        undone = migrations.rollback(s.dsn, down_to)
        listed = ", ".join(f"{m.version:04d}_{m.name}" for m in undone) or "-"
        err.print(f"rolled back {len(undone)} migration(s): {listed}")
        return
    applied = migrations.migrate(s.dsn, target)
    listed = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
    err.print(
        f"database {s.dsn_display}: applied {len(applied)} migration(s)"
        + (f": {listed}" if applied else " (up to date)")
    )


@cli.command()
@click.option(
    "--processes",
    "-p",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes to run and supervise on this host (web ports from EVENTSINK_WEB_PORT up).",
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


for command in (
    produce,
    chat,
    retention,
    schema,
    tail_command,
    lag,
    ledger_command,
    topics,
    dlq,
    verify,
    backup,
    restore,
):
    cli.add_command(command)


def main() -> None:
    scrub_output()
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        # One line, however long: a usage error says what is valid on the line a script greps.
        err.print(f"[red]error:[/red] {scrub(exc.format_message())}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # last resort: never print a DSN or password
        err.print(f"[red]error:[/red] {type(exc).__name__}: {scrub(str(exc))}", highlight=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
