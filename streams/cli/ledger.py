"""`eventsink ledger`: what the offsets ledger holds, and the two decisions only an operator makes.

- `reset`: a topic was deleted and created again (its offsets restart at 0 under a new topic id).
  Workers stop its partitions rather than skip the new records; this starts them on the new log.
  Refused for a partition whose log is still the one the ledger counted.
- `skip`: the broker deleted records (retention) before they were applied. Workers stop the
  partition (with `EVENTSINK_ON_DATA_LOSS=stop`, the default); this accepts the loss, records it
  (`eventsink.lost_ranges`, the ledger's `lost`, shown by `verify`) and lets the partition go on.
  Refused over offsets the broker still has, unless `--lose-records-the-broker-still-has`.

Both record who changed what (`eventsink.ledger_changes`, listed by `history`). A dry run takes
the same path in a transaction that is rolled back, so it shows exactly what the real run does.
Running workers pick up either within `EVENTSINK_LOG_CHECK_S` seconds.
"""

from __future__ import annotations

import getpass
import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
import orjson
import psycopg
from rich.table import Table

from sinks.core import ledger
from sinks.dsn import server_and_database
from sinks.secrets import scrub
from streams import aio
from streams.cli import names
from streams.cli.console import err, out, settings
from streams.settings import Settings
from streams.tools.identity import TopicIdentity, broker_identities, log_changed
from streams.tools.reader import Reader

OVERRIDE = "--lose-records-the-broker-still-has"


@click.group("ledger")
def ledger_command() -> None:
    """Inspect the offsets ledger; reset it after a topic was recreated; accept a loss; list changes."""


def _operator(s: Settings) -> ledger.Operator:
    """Who is changing the ledger (EVENTSINK_OPERATOR, else the OS user) and the command typed."""
    name = s.operator
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):  # no user name for this uid (a bare container)
            name = f"uid {os.getuid()}"
    return ledger.Operator(name, scrub(shlex.join(["eventsink", *sys.argv[1:]])))


@contextmanager
def _change(s: Settings, dry_run: bool) -> Iterator[psycopg.Connection]:
    """A transaction for a change to the ledger: committed, or rolled back for a dry run (the same
    statements, the same answers)."""
    with psycopg.connect(s.dsn) as conn:
        with conn.transaction():
            yield conn
            if dry_run:
                raise psycopg.Rollback()  # leaves the transaction block, rolled back
    if dry_run:
        err.print("dry run: nothing changed")


async def _log_bounds(s: Settings, topic: str, partitions: list[int]) -> tuple[dict[int, int], dict[int, int]]:
    """(log start offset, log end offset) per partition, as the broker reports them now."""
    async with Reader(s.bootstrap_list, s.kafka_security()) as reader:
        count = (await reader.partition_counts([topic])).get(topic, 0)
        present = [p for p in partitions if p < count]
        if not present:
            return {}, {}
        return await reader.beginning_offsets(topic, present), await reader.end_offsets(topic, present)


def _for_group(s: Settings, group: str | None) -> Settings:
    """The settings with the group checked (`--group`, else EVENTSINK_GROUP_ID) and set."""
    return s.model_copy(update={"group_id": names.group(s, group)})


async def _committed(s: Settings, topic: str, partition: int) -> int | None:
    """The group's committed offset in Kafka for topic[partition] (None: none, or unknown)."""
    try:
        async with Reader(s.bootstrap_list, s.kafka_security()) as reader:
            return (await reader.committed(s.group_id, topic, [partition])).get(partition)
    except Exception:  # the broker's answer is a second opinion here, not a condition
        return None


@ledger_command.command("show")
@click.option("--topic", default=None, help="Only this topic.")
@click.option("--group", default=None, help="Consumer group (default: EVENTSINK_GROUP_ID).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per partition.")
def show(topic: str | None, group: str | None, as_json: bool) -> None:
    """The ledger of a consumer group: last offset, counters, log identity."""
    s = settings()
    group_id = names.group(s, group)
    if topic is not None:
        names.ledger_topic(s, topic, group_id)

    async def rows() -> list[ledger.LedgerRow]:
        async with await psycopg.AsyncConnection.connect(s.dsn) as conn:
            return await ledger.rows(conn, group_id, topic)

    found = aio.run(rows())
    if as_json:
        for r in found:
            out.print(orjson.dumps(r, default=str).decode(), highlight=False, soft_wrap=True)
        return
    if not found:
        err.print(f"the ledger of group {group_id} has no partition{f' of {topic}' if topic else ''} yet")
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
@click.option(
    "--partition", type=click.IntRange(min=0, max=2**31 - 1), default=None, help="Only this partition (all by default)."
)
@click.option("--group", default=None, help="Consumer group (default: EVENTSINK_GROUP_ID).")
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
def reset(topic: str, partition: int | None, group: str | None, dry_run: bool) -> None:
    """Start the partitions of a recreated topic from the beginning of the new log.

    Only partitions whose log is not the one the ledger counted (another topic id or cluster id,
    or, where the broker reports no ids, a log that ends below the ledger) are reset; a topic
    that was not recreated is refused: its records would be applied again from offset 0.
    """
    s = settings()
    topic = names.source_kind(s, topic, "--topic").topic
    s = _for_group(s, group)
    rows = {r.partition: r for r in aio.run(_rows(s.dsn, s.group_id, topic))}
    if not rows:
        raise click.BadParameter(f"the ledger of group {s.group_id} has no partition of {topic}", param_hint="--topic")
    if partition is not None and partition not in rows:
        raise click.BadParameter(
            f"the ledger of group {s.group_id} has no {topic}[{partition}]; it has partitions "
            f"{', '.join(map(str, sorted(rows)))}",
            param_hint="--partition",
        )
    wanted = [p for p in sorted(rows) if partition is None or p == partition]
    now: TopicIdentity | None = aio.run(broker_identities(s.bootstrap_list, s.kafka_security(), [topic])).get(topic)
    _, ends = aio.run(_log_bounds(s, topic, wanted)) if now is not None else ({}, {})
    changed: dict[int, str] = {}
    for p in wanted:
        r = rows[p]
        why = (
            "the topic does not exist on the broker now"
            if now is None
            else log_changed(r.last_offset, r.topic_id, r.cluster_id, now, ends.get(p))
        )
        if why is None and p not in ends and r.last_offset >= 0:
            why = f"the topic has no partition {p} now"
        if why is not None:
            changed[p] = why
    unchanged = [p for p in wanted if p not in changed]
    if not changed and all(rows[p].last_offset < 0 and rows[p].topic_id is None for p in wanted):
        # A partition reset already (or never applied): nothing counted, nothing to start again.
        which = "its partitions were" if partition is None else f"partition {partition} was"
        err.print(f"{topic}: {which} already reset (the ledger is empty): nothing to do", highlight=False)
        return
    if not changed:
        ids = f"topic id {now.topic_id}" if now is not None and now.topic_id else "offsets at or past the ledger"
        raise click.UsageError(
            f"{topic}: the broker serves the log the ledger counted ({ids}); a reset would apply "
            f"{'its' if partition is None else f'partition {partition}'} records again from offset 0: refused"
        )
    who = _operator(s)
    with _change(s, dry_run) as conn:
        done = ledger.reset(conn, s.group_id, topic, changed, who)
        for c in done:
            err.print(
                f"{topic}[{c.partition}]: last offset {c.before_offset} -> {c.after_offset} ({changed[c.partition]})",
                highlight=False,
            )
        if unchanged:
            err.print(
                f"{topic}: left alone, their log is the one the ledger counted: partition(s) "
                f"{', '.join(map(str, unchanged))}",
                highlight=False,
            )
        if not dry_run:
            err.print(
                f"reset {len(done)} partition(s) of {topic}; running workers resume them within {s.log_check_s:g}s",
                highlight=False,
            )


def skip_refusal(where: str, to: int, start: int, end: int, last: int, lose_live_records: bool) -> str | None:
    """Why `skip --to` cannot be right for a partition whose log runs from `start` to `end` - 1 and
    whose ledger is at `last`, or None. Only offsets the broker deleted may be given up, unless the
    operator says they give up on records it still has; never offsets not written yet."""
    if to >= end:
        return (
            f"{where} ends at offset {end - 1}: offset {to} is not written yet, and skipping it would drop "
            "records published later"
        )
    if last >= to:
        return f"the ledger of {where} is already at or past offset {to} (at {last})"
    if to >= start and not lose_live_records:
        allowed = f"--to {start - 1} at most" if start - 1 > last else "no offset after the ledger was deleted"
        return (
            f"the broker still has {where} offsets {max(start, last + 1)} to {to} (its log starts at {start}, the "
            f"ledger is at {last}): {allowed}; add {OVERRIDE} to give up on records a worker can still apply"
        )
    return None


@ledger_command.command("skip")
@click.option("--topic", required=True)
@click.option("--partition", type=click.IntRange(min=0, max=2**31 - 1), required=True)
@click.option(
    "--to", "to", type=click.IntRange(min=0, max=2**63 - 1), required=True, help="The last offset to give up on."
)
@click.option("--group", default=None, help="Consumer group (default: EVENTSINK_GROUP_ID).")
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option(
    OVERRIDE,
    "lose_live_records",
    is_flag=True,
    help="Also give up on offsets the broker still has (they are never applied). Only for records known to be bad.",
)
def skip(topic: str, partition: int, to: int, group: str | None, dry_run: bool, lose_live_records: bool) -> None:
    """Accept that offsets after the ledger up to --to are lost (deleted by retention): recorded
    in eventsink.lost_ranges and the ledger's `lost`, and the partition goes on after them.

    --to must be below the partition's log start offset (what the broker deleted); offsets the
    broker still has are refused unless --lose-records-the-broker-still-has, and offsets past
    the log's end (not written yet) always are.
    """
    s = settings()
    topic = names.source_kind(s, topic, "--topic").topic
    s = _for_group(s, group)
    names.partitions(s, topic, [partition])
    starts, ends = aio.run(_log_bounds(s, topic, [partition]))
    start, end = starts[partition], ends[partition]
    where = f"{topic}[{partition}]"
    row = next((r for r in aio.run(_rows(s.dsn, s.group_id, topic)) if r.partition == partition), None)
    # The group's workers commit to Kafka only what their ledger holds: a ledger here without the
    # partition, or behind that offset, is not theirs (another database), or lost commits (a
    # restore, a failover) that the workers are about to apply again.
    committed = aio.run(_committed(s, topic, partition))
    applied_next = row.last_offset + 1 if row is not None else 0
    if committed and committed > applied_next:
        here = f"has no {where}" if row is None else f"has {where} at offset {row.last_offset}"
        raise click.UsageError(
            f"the ledger of group {s.group_id} in database {server_and_database(s.dsn)} {here}, behind the offset "
            f"{committed} the group committed for it in Kafka: its workers write their ledger to another database "
            "(check DATABASE_URL), or this one lost commits they will apply again; a skip here would be recorded where "
            "they never look, or over records they are about to apply"
        )
    if row is not None:
        # Offsets of one log are no offsets of another: a ledger that counts the log before a
        # recreation would record as lost what the new log never lost (the worker's and `reset`'s rule).
        now = aio.run(broker_identities(s.bootstrap_list, s.kafka_security(), [topic])).get(topic)
        changed = log_changed(row.last_offset, row.topic_id, row.cluster_id, now, end)
        if changed is not None:
            detail = (
                f"topic id {row.topic_id}, the broker serves {now.topic_id}"
                if row.topic_id and now is not None and now.topic_id
                else changed
            )
            raise click.UsageError(f"the ledger of {where} counts another log ({detail}): use `eventsink ledger reset`")
    refused = skip_refusal(where, to, start, end, row.last_offset if row else ledger.NOTHING_APPLIED, lose_live_records)
    if refused is not None:
        raise click.BadParameter(refused, param_hint="--to")
    who = _operator(s)
    with _change(s, dry_run) as conn:
        reason = (
            f"the broker's log starts at {start}: the offsets before it were deleted before they were applied"
            if to < start
            else f"{OVERRIDE}: the broker still had the offsets from {start} on (its log ended at {end - 1})"
        )
        change = ledger.skip(conn, s.group_id, topic, partition, to, reason, who)
        if change is None:
            raise click.BadParameter(f"the ledger of {where} is already at or past offset {to}", param_hint="--to")
        err.print(
            f"{where}: {to - change.before_offset} offset(s), {change.before_offset + 1} to {to}, given up as lost; "
            f"last offset {change.before_offset} -> {to} ({reason})",
            highlight=False,
        )
        if not dry_run:
            err.print("recorded as lost; the change is listed by `eventsink ledger history`")


@ledger_command.command("history")
@click.option("--topic", default=None, help="Only this topic.")
@click.option("--group", default=None, help="Only this consumer group (default: every group).")
@click.option("--limit", type=click.IntRange(min=1, max=1_000_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per change.")
def history(topic: str | None, group: str | None, limit: int, as_json: bool) -> None:
    """Changes operators made to the ledger (skip, reset), newest first: who, when, what command,
    each partition's offset before and after."""
    s = settings()
    if group is not None:
        names.group(s, group)
    if topic is not None:
        names.ledger_topic(s, topic, group or s.group_id)
    with psycopg.connect(s.dsn) as conn:
        changes = ledger.history(conn, group, topic, limit)
    if as_json:
        for c in changes:
            out.print(orjson.dumps(c, default=str).decode(), highlight=False, soft_wrap=True)
        return
    if not changes:
        err.print("no operator has changed the ledger")
        return
    table = Table("when", "who", "action", "group", "partition", "before", "after", "why", "command")
    for c in changes:
        table.add_row(
            f"{c.changed_at:%Y-%m-%d %H:%M:%S}",
            c.operator,
            c.action,
            c.consumer_group,
            f"{c.topic}[{c.partition}]",
            str(c.before_offset),
            str(c.after_offset),
            c.reason,
            c.command,
        )
    out.print(table)


async def _rows(dsn: str, group: str, topic: str) -> list[ledger.LedgerRow]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        return await ledger.rows(conn, group, topic)
