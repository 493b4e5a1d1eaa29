"""`eventsink lag`: per partition, how far the group is behind in Kafka and in PostgreSQL."""

from __future__ import annotations

import sys

import click
import orjson
from rich.table import Table

from streams.cli import names
from streams.cli.console import err, out, settings
from streams.kinds import kinds
from streams.tools.lag import collect


@click.command()
@click.option("--group", default=None, help="Consumer group (default: EVENTSINK_GROUP_ID).")
@click.option("--topic", "topics", multiple=True, help="Topics to look at (default: the worker's source topics).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--max-lag",
    type=click.IntRange(min=0, max=2**63 - 1),
    default=None,
    help="Also exit with status 1 when the total lag in PostgreSQL terms exceeds this.",
)
def lag(group: str | None, topics: tuple[str, ...], as_json: bool, max_lag: int | None) -> None:
    """Lag per topic and partition: end offset, Kafka's committed offset, the ledger's applied offset.

    Reads without joining the group or committing anything. Some brokers (Tansu) under-report
    end offsets while they are being written to; numbers settle when the topic is quiescent.
    Exits with status 1 when a partition is stopped (a worker applies nothing of it until an
    operator acts), or the lag exceeds --max-lag.
    """
    s = settings()
    wanted = [names.source_kind(s, t, "--topic").topic for t in topics]
    for topic in wanted:
        names.broker_partitions(s, topic, "--topic")
    group = names.group(s, group)
    wanted = wanted or [k.topic for k in kinds(s)]
    rows = collect(s.bootstrap_list, s.dsn, group, wanted, s.kafka_security())
    if not rows:  # a total of 0 would read as "no lag" when nothing was looked at
        raise click.ClickException(f"none of {', '.join(wanted)} exists on the broker: no lag to report")
    kafka_total = sum(r.kafka_lag for r in rows)
    ledger_total = sum(r.ledger_lag for r in rows)
    stopped = [r for r in rows if r.stopped]
    if as_json:
        click.echo(
            orjson.dumps(
                {
                    "group": group,
                    "partitions": [r.as_dict() for r in rows],
                    "total": {"kafka_lag": kafka_total, "ledger_lag": ledger_total, "stopped": len(stopped)},
                }
            ).decode()
        )
    else:
        table = Table(title=f"consumer group {group}", title_justify="left")
        for col in (
            "topic",
            "partition",
            "end offset",
            "committed (Kafka)",
            "applied (PostgreSQL)",
            "lag (Kafka)",
            "lag (PostgreSQL)",
        ):
            table.add_column(col, justify="left" if col == "topic" else "right")
        for r in rows:
            table.add_row(
                r.topic,
                str(r.partition),
                str(r.end_offset),
                "-" if r.committed is None else str(r.committed),
                str(r.applied),
                str(r.kafka_lag),
                f"{r.ledger_lag} (stopped)" if r.stopped else str(r.ledger_lag),
            )
        table.add_section()
        table.add_row("total", "", "", "", "", str(kafka_total), str(ledger_total), style="bold")
        out.print(table)
        for r in stopped:
            # The worker applies nothing of it until an operator acts: lag that never shrinks.
            err.print(
                f"[red]{r.topic}[{r.partition}] is stopped, {r.stopped}; see `eventsink ledger reset`[/]",
                highlight=False,
            )
    # A stopped partition is a failed check whatever --max-lag says: its lag never shrinks on its
    # own. 1, the check failed; 2 is kept for usage errors, as in every command.
    if stopped or (max_lag is not None and ledger_total > max_lag):
        sys.exit(1)
