"""`eventsink ledger`: what the offsets ledger holds, and the two decisions only an operator makes.

- `reset`: a topic was deleted and created again (its offsets restart at 0 under a new topic id).
  Workers stop its partitions rather than skip the new records; this starts them on the new log.
- `skip`: the broker deleted records (retention) before they were applied. Workers stop the
  partition (with `EVENTSINK_ON_DATA_LOSS=stop`, the default); this accepts the loss, records it
  (`eventsink.lost_ranges`, the ledger's `lost`, shown by `verify`) and lets the partition go on.

Running workers pick up either within `EVENTSINK_LOG_CHECK_S` seconds.
"""

from __future__ import annotations

import click
import orjson
import psycopg
from aiokafka import AIOKafkaClient
from rich.table import Table

from sinks.core import ledger
from streams import aio
from streams.cli.console import err, out, settings
from streams.tools.identity import TopicIdentity, identities


@click.group("ledger")
def ledger_command() -> None:
    """Inspect the offsets ledger; reset it after a topic was recreated; accept a loss."""


async def _broker_identity(topic: str) -> TopicIdentity | None:
    s = settings()
    client = AIOKafkaClient(bootstrap_servers=s.bootstrap_list, **s.kafka_security())
    try:
        await client.bootstrap()
        return (await identities(client, [topic])).get(topic)
    except Exception as exc:
        err.print(f"[yellow]the broker's topic id is unknown:[/yellow] {type(exc).__name__}: {exc}", highlight=False)
        return None
    finally:
        await client.close()


@ledger_command.command("show")
@click.option("--topic", default=None, help="Only this topic.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per partition.")
def show(topic: str | None, as_json: bool) -> None:
    """The ledger of the consumer group (EVENTSINK_GROUP_ID): last offset, counters, log identity."""
    s = settings()

    async def rows() -> list[ledger.LedgerRow]:
        async with await psycopg.AsyncConnection.connect(s.dsn) as conn:
            return await ledger.rows(conn, s.group_id, topic)

    found = aio.run(rows())
    if as_json:
        for r in found:
            out.print(orjson.dumps(r, default=str).decode(), highlight=False, soft_wrap=True)
        return
    table = Table(
        "topic", "partition", "last offset", "events", "applied", "duplicates", "dead letters", "lost", "topic id"
    )
    for r in found:
        table.add_row(
            r.topic,
            str(r.partition),
            str(r.last_offset),
            str(r.events),
            str(r.rows_applied),
            str(r.duplicates),
            str(r.dead_letters),
            str(r.lost),
            str(r.topic_id or "-"),
        )
    out.print(table)


@ledger_command.command("reset")
@click.option("--topic", required=True, help="The source topic that was deleted and created again.")
@click.option("--partition", type=click.IntRange(min=0), default=None, help="Only this partition (all by default).")
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
def reset(topic: str, partition: int | None, dry_run: bool) -> None:
    """Start the partitions of a recreated topic from the beginning of the new log.

    Every record of the new log is then applied once (duplicates of keys already stored are
    recognised as such). Do not run this for a topic that was not recreated: the records after
    the ledger would be applied again from offset 0, which is harmless for rows (the keys are
    stored) but counts them again as duplicates.
    """
    s = settings()
    now = aio.run(_broker_identity(topic))
    before = {r.partition: r for r in aio.run(_rows(s.dsn, s.group_id, topic))}
    wanted = [p for p in sorted(before) if partition is None or p == partition]
    if not wanted:
        raise click.ClickException(f"the ledger of group {s.group_id} has no partition of {topic} to reset")
    for p in wanted:
        r = before[p]
        err.print(
            f"{topic}[{p}]: last offset {r.last_offset} -> {ledger.NOTHING_APPLIED} "
            f"(ledger counted topic id {r.topic_id or 'unknown'}; the broker now serves "
            f"{(now.topic_id if now else None) or 'unknown'})",
            highlight=False,
        )
    if dry_run:
        err.print("dry run: nothing changed")
        return
    with psycopg.connect(s.dsn) as conn, conn.transaction():
        done = ledger.reset(conn, s.group_id, topic, partition)
    err.print(f"reset {len(done)} partition(s) of {topic}; running workers resume them within {s.log_check_s:g}s")


@ledger_command.command("skip")
@click.option("--topic", required=True)
@click.option("--partition", type=click.IntRange(min=0), required=True)
@click.option("--to", "to", type=click.IntRange(min=0), required=True, help="The last offset to give up on.")
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
def skip(topic: str, partition: int, to: int, dry_run: bool) -> None:
    """Accept that offsets after the ledger up to --to are lost (deleted by retention): recorded
    in eventsink.lost_ranges and the ledger's `lost`, and the partition goes on after them."""
    s = settings()
    with psycopg.connect(s.dsn) as conn:
        with conn.transaction():
            skipped = ledger.skip(conn, s.group_id, topic, partition, to, "operator")
            if skipped is None:
                raise click.ClickException(f"{topic}[{partition}]: the ledger is already at or past offset {to}")
            if dry_run:
                err.print(
                    f"{topic}[{partition}]: would record {skipped} offset(s) up to {to} as lost "
                    "(dry run: nothing changed)",
                    highlight=False,
                )
                raise psycopg.Rollback()  # leaves the transaction block, rolled back
            err.print(f"{topic}[{partition}]: {skipped} offset(s) up to {to} recorded as lost", highlight=False)


async def _rows(dsn: str, group: str, topic: str) -> list[ledger.LedgerRow]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return await ledger.rows(conn, group, topic)
