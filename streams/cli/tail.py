"""`eventsink tail`: follow a topic, decoded and filtered, without joining the workers' group."""

from __future__ import annotations

import asyncio
from typing import Any

import click
from rich.markup import escape

from schemas.codec import Decoded, printable
from streams.cli import names
from streams.cli.console import err, out, settings
from streams.kinds import Kind, all_kinds
from streams.settings import Settings
from streams.tools.tail import Filters, Start, TailRow, json_line, parse_since, tail


def _kind_of(s: Settings, topic: str, type_: str | None) -> Kind:
    """What TOPIC carries: one of eventsink's topics says it; another existing topic needs --type."""
    ours = names.any_kind(s, topic)
    if type_ is None and ours is None:
        try:
            names.broker_partitions(s, topic)
        except click.BadParameter:
            raise names.unknown_topic(s, topic) from None
        raise click.BadParameter(
            f"{topic!r} is not one of eventsink's topics: give --type metric|chat|analysis", param_hint="TOPIC"
        )
    names.broker_partitions(s, topic)
    if ours is not None and type_ is not None and type_ != ours.name:
        # Every record would read as invalid: the settings say what the topic carries.
        raise click.BadParameter(
            f"{topic!r} carries {ours.name} events by these settings: leave --type out, or give --type {ours.name}",
            param_hint="--type",
        )
    if ours is not None:
        return ours
    return next(kind for kind in all_kinds(s) if kind.name == type_)


def _summary(event: Any) -> str:
    kind = type(event).event_kind
    if kind == "metric":
        tags = " ".join(f"{k}={v}" for k, v in event.tags.items())
        return f"[bold]{escape(event.name)}[/]={event.value:g}{escape(event.unit or '')} {escape(tags)}"
    if kind == "chat":
        tokens = f" ({event.prompt_tokens or 0}+{event.completion_tokens or 0} tokens)" if event.model else ""
        content = event.content if len(event.content) <= 120 else event.content[:117] + "..."
        return f"conv={event.conversation_id} [bold]{event.role}[/]: {escape(content)!r}{tokens}"
    progress = f" {event.progress}%" if event.progress is not None else ""
    return f"analysis={event.analysis_id} [bold]{event.status}[/]{progress}"


def pretty(row: TailRow) -> str:
    at = f"{row.timestamp:%Y-%m-%d %H:%M:%S.%f}" if row.timestamp else f"{row.timestamp_ms} ms"
    head = f"[dim]{at}[/] [cyan]{row.topic}[{row.partition}]@{row.offset}[/]"
    if row.dlq is not None:
        head += (
            f" [yellow]DLQ {escape(row.dlq.reason)} from {row.dlq.source_topic}[{row.dlq.source_partition}]"
            f"@{row.dlq.source_offset}: {escape(row.dlq.detail)}[/]"
        )
    elif row.replayed is not None:
        replay_id, (topic, partition, offset) = row.replayed
        head += f" [magenta]replayed by {escape(replay_id)}, first failed at {escape(topic)}[{partition}]@{offset}[/]"
    if isinstance(row.result, Decoded):
        return f"{head} tenant={row.tenant} {_summary(row.result.event)}"
    raw = (row.value or b"").decode("utf-8", "replace")
    raw = raw if len(raw) <= 160 else raw[:157] + "..."
    return f"{head} [red]INVALID {row.result.reason.value}: {escape(row.result.detail)}[/] [dim]{escape(raw)}[/]"


@click.command("tail")
@click.argument("topic")
@click.option("--tenant", type=names.TENANT, default=None, help="Only this tenant's records (a UUID).")
@click.option(
    "--type",
    "type_",
    type=click.Choice(["metric", "chat", "analysis"]),
    default=None,
    help="What the topic carries (guessed for eventsink's own topics and their DLQs).",
)
@click.option("--from-beginning", is_flag=True, help="Start at the beginning of each partition.")
@click.option("--since", default=None, help="Start at a time: 10m, 2h, 1d, or a timestamp.")
@click.option(
    "--last", type=click.IntRange(min=0), default=None, help="Start N records before each partition's end (default 10)."
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new records.")
@click.option("--format", "fmt", type=click.Choice(["pretty", "json"]), default="pretty", show_default=True)
@click.option("--grep", default=None, help="Only records whose raw value (or DLQ detail) contains TEXT.")
@click.option("--partition", "partitions", type=int, multiple=True, help="Only these partitions.")
def tail_command(
    topic: str,
    tenant: str | None,
    type_: str | None,
    from_beginning: bool,
    since: str | None,
    last: int | None,
    follow: bool,
    fmt: str,
    grep: str | None,
    partitions: tuple[int, ...],
) -> None:
    """Print a topic's records decoded and validated; invalid ones marked with their error.

    Never joins a consumer group and never commits offsets: the workers are not disturbed.
    """
    if sum(bool(x) for x in (from_beginning, since, last is not None)) > 1:
        raise click.UsageError("use one of --from-beginning, --since and --last")
    s = settings()
    kind = _kind_of(s, topic, type_)
    if partitions:
        names.partitions(s, topic, partitions)
    try:
        start = Start(
            from_beginning=from_beginning,
            since=parse_since(since) if since else None,
            last=last if last is not None else 10,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None

    shown = 0

    def emit(row: TailRow) -> None:
        nonlocal shown
        shown += 1
        if fmt == "json":
            click.echo(json_line(row))
        else:
            # A record's text may carry terminal control sequences: shown escaped, never obeyed.
            out.print(printable(pretty(row)), highlight=False, soft_wrap=True)

    try:
        asyncio.run(
            tail(
                s.bootstrap_list,
                topic,
                kind.model,
                emit,
                start=start,
                follow=follow,
                partitions=partitions or None,
                filters=Filters(tenant, grep),
                context=kind.context,
                decoder=kind.decode,
                security=s.kafka_security(),
                on_unreadable=lambda u: err.print(
                    f"[yellow]{u.topic}[{u.partition}]@{u.offset}: the Kafka client cannot read this record batch "
                    f"({printable(u.detail)}); stepped over[/]",
                    highlight=False,
                ),
                # On stderr, so that stdout stays the records alone (JSON lines with --format json).
                on_live=lambda: err.print(
                    f"[dim]{topic}: the backlog is over; following new records (Ctrl-C to stop)[/]", highlight=False
                ),
            )
        )
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:  # Ctrl-C is how --follow ends: say what was shown, exit 130 as every command
        err.print(f"stopped after {shown} records of {topic}", highlight=False)
        raise
    if shown == 0:
        # Nothing printed must not look like a hang or a broken pipe: say that nothing matched.
        asked = [
            f"--tenant {tenant}" if tenant else "",
            f"--grep {grep!r}" if grep else "",
            f"--since {since}" if since else "",
        ]
        which = ", ".join(a for a in asked if a)
        err.print(f"no record of {topic} matched{f' ({which})' if which else ''}", highlight=False)
