"""`eventsink verify`: reconcile a topic with the database, per tenant."""

from __future__ import annotations

import sys

import click
import orjson
from rich.markup import escape
from rich.progress import TaskID
from rich.table import Table

from streams.cli import names
from streams.cli.console import READ_DSN_HELP, dsn_to_read, err, out, progress_bar, settings
from streams.settings import Settings
from streams.tools.tail import parse_since
from streams.tools.verify import verify as run_verify


@click.command()
@click.argument("topic")
@click.option("--tenant", type=names.TENANT, default=None, help="Only this tenant (a UUID).")
@click.option("--since", default=None, help="Only records since a time: 10m, 2h, 1d, or a timestamp.")
@click.option(
    "--group", default=None, help="Consumer group whose ledger tells what is pending (default: EVENTSINK_GROUP_ID)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--read-dsn", default=None, help=READ_DSN_HELP)
def verify(
    topic: str, tenant: str | None, since: str | None, group: str | None, as_json: bool, read_dsn: str | None
) -> None:
    """Read TOPIC from the start (no consumer group, no commit) and check the database against it.

    Per tenant: records seen, distinct valid events, applied, dead-lettered, pending (past the
    ledger), missing and duplicated (including chat counters and analysis rows that disagree with
    the events). Exits with status 1 when anything is missing or duplicated, and when it verified
    nothing: the database's ledger has no row of the group for TOPIC, or is behind the offsets the
    group committed in Kafka (not the database the workers write to). It says which server and
    database it read, primary or standby (a standby may lag: what it has not replayed yet is pending).
    """
    s = settings()
    read_from = dsn_to_read(read_dsn, s)  # a usage error before anything is read
    try:
        since_at = parse_since(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    kind = names.source_kind(s, topic)
    names.broker_partitions(s, kind.topic)
    group = names.group(s, group)
    try:
        # Reading a large topic takes a while: records read so far, on a terminal (the total is
        # not known until the read ends: Tansu under-reports end offsets).
        with progress_bar() as bar:
            tasks: dict[str, TaskID] = {}

            def progress(what: str, n: int) -> None:
                if what not in tasks:
                    tasks[what] = bar.add_task(f"reading {what}", total=None)
                bar.update(tasks[what], advance=n)

            report = run_verify(
                s.bootstrap_list,
                read_from,
                group,
                kind,
                tenant=tenant,
                since=since_at,
                security=s.kafka_security(),
                dsn_source=_dsn_source(read_dsn, s),
                progress=progress,
            )
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    if report.totals().seen == 0:
        # Nothing read is nothing verified: never "consistent".
        of = f" of tenant {tenant}" if tenant else ""
        since_text = f" since {since}" if since else ""
        raise click.ClickException(f"{kind.topic} holds no records{of}{since_text}: nothing to verify")
    if as_json:
        click.echo(orjson.dumps(report.as_dict()).decode())
    else:
        table = Table(title=f"{kind.topic} against PostgreSQL (group {report.group})", title_justify="left")
        columns = ("tenant", "seen", "unique", "applied", "in DLQ", "pending", "pruned", "missing", "duplicated")
        for col in columns:
            table.add_column(col, justify="left" if col == "tenant" else "right")
        rows = sorted(report.tenants.values(), key=lambda t: t.tenant)
        for t in [*rows, report.totals()]:
            style = "bold" if t.tenant == "total" else ("red" if not t.ok else "")
            table.add_row(
                t.tenant,
                *(
                    str(getattr(t, f))
                    for f in ("seen", "unique", "applied", "in_dlq", "pending", "pruned", "missing", "duplicated")
                ),
                style=style,
            )
        out.print(table)
        err.print(f"read PostgreSQL at {escape(str(report.read_from))}", highlight=False)
        for problem in report.problems[:20]:
            err.print(f"[red]- {problem}[/]", highlight=False)
        if report.dlq_repeats:
            err.print(
                f"{report.dlq_repeats} dead letters were published twice (a worker stopped between the DLQ "
                "and its commit); harmless: they name the same source record"
            )
        if report.lost:
            ranges = ", ".join(f"[{part}] {first}..{last} ({why})" for part, first, last, why in report.lost[:10])
            err.print(
                f"[yellow]{report.lost_offsets} offset(s) were lost before they were applied and are recorded as "
                f"such: {ranges}[/]",
                highlight=False,
            )
        if report.behind_kafka and report.on_standby:
            err.print(
                f"[yellow]the standby's ledger is behind the group's Kafka committed offsets on "
                f"{len(report.behind_kafka)} partition(s): it has not replayed them yet (what it has not "
                "replayed reads as pending)[/]",
                highlight=False,
            )
        if report.unverified is None:
            err.print("[green]consistent[/]" if report.ok else "[red]inconsistent[/]")
    if report.unverified is not None:
        # A check of nothing: the last line says so, and what to check (exit status 1).
        raise click.ClickException(report.unverified)
    if not report.ok:
        sys.exit(1)


def _dsn_source(option: str | None, loaded: Settings) -> str:
    """What names the DSN verify reads, for the operator to check (never its value)."""
    if option is not None:
        return "--read-dsn"
    return "EVENTSINK_READ_DATABASE_URL" if loaded.read_database_url is not None else "DATABASE_URL"
