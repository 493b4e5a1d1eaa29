"""`eventsink dlq list|replay`: what failed, why, where from; and sending it back."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import signal
import socket
import sys
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import click
import orjson
from rich.table import Table
from rich.text import Text

from schemas.codec import printable
from schemas.deadletter import Reason
from schemas.framing import unframe
from sinks.core import deadletters
from sinks.secrets import scrub
from streams import aio
from streams.cli import names
from streams.cli.console import err, out, progress_bar, settings
from streams.publish.publisher import Publisher
from streams.settings import Settings
from streams.tools import dlq as tool
from streams.tools import reader
from streams.tools.tail import parse_since
from streams.tools.topics import DLQ_CONFIG, TopicSpec, ensure_topics

# A reason no letter can have would select nothing, silently: refused like a misspelt option.
REASONS = click.Choice([r.value for r in Reason])

# The largest record a replay sends (uncompressed; the broker limits the compressed batch).
REPLAY_MAX_BYTES = 64 * 1024 * 1024


def _since(value: str | None) -> datetime | None:
    try:
        return parse_since(value) if value else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


def _dlq_topics(s: Settings) -> str:
    return ", ".join(tool.pairs(s))


def _not_a_source(s: Settings, topic: str) -> None:
    sources = {t: d for d, t in tool.pairs(s).items()}
    if topic in sources:
        raise click.UsageError(f"{topic} is a source topic, not a dead-letter topic: use {sources[topic]}")


def _read(s: Settings, topic: str) -> list[tool.Letter]:
    """Every record of a dead-letter topic; a usage error for a source topic, a topic that does
    not exist or one whose records are not dead letters (they would list with blank reasons)."""
    _not_a_source(s, topic)
    try:
        records = aio.run(reader.read_all(s.bootstrap_list, topic, security=s.kafka_security()))
    except LookupError:
        raise click.UsageError(f"topic {topic!r} does not exist: the dead-letter topics are {_dlq_topics(s)}") from None
    letters = [tool.Letter.of(r) for r in records]
    if topic not in tool.pairs(s) and not tool.is_dead_letter_topic(letters):
        raise click.UsageError(
            f"{topic} is not a dead-letter topic (its records carry no eventsink.reason): "
            f"the dead-letter topics are {_dlq_topics(s)}"
        )
    return letters


def _text(data: bytes | None, limit: int) -> str:
    return (data or b"").decode("utf-8", "replace")[:limit]


def _confluent_sources(s: Settings) -> set[str]:
    """Source topics whose kind reads values framed by Confluent's serializers (confluent-json)."""
    from streams.kinds import all_kinds

    return {kind.topic for kind in all_kinds(s) if kind.value_format == "confluent-json"}


def _framed(data: bytes | None) -> tuple[bytes | None, int | None]:
    """(the JSON, the schema id) of a Confluent-framed value; (the value, None) when it is not framed."""
    framed = unframe(data) if data is not None else None
    return (data, None) if framed is None or not isinstance(framed, tuple) else (framed[1], framed[0])


@click.group()
def dlq() -> None:
    """Inspect and replay dead-letter topics."""


@dlq.command("list")
@click.argument("topic")
@click.option("--reason", type=REASONS, default=None, help="Only this reason.")
@click.option(
    "--tenant", default=None, type=names.TENANT, help="Only records keyed by this tenant (any UUID spelling)."
)
@click.option("--since", default=None, help="Only records dead-lettered since: 10m, 2h, 1d, or a timestamp.")
@click.option("--limit", type=click.IntRange(min=1, max=1_000_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dead letter.")
def list_(topic: str, reason: str | None, tenant: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """What failed, why, and where it came from (newest last).

    One line per dead letter: the letters of one original record (a worker that died before its
    commit, a replay that failed again) are one dead letter, shown by its latest failure with
    the number of failures ("tries") and the position where it first failed.
    """
    s = settings()
    since_at = _since(since)  # a usage error before anything is read
    letters = _read(s, topic)
    picked = tool.dead_letters(tool.select(letters, reason, tenant, since_at))
    if not picked and (reason or tenant or since):
        # A filter that matches nothing looks like a clean topic: said, beside the empty output.
        filters = " ".join(f"--{k} {v}" for k, v in (("reason", reason), ("tenant", tenant), ("since", since)) if v)
        err.print(
            f"no dead letter of {topic} matches {filters} ({len(tool.dead_letters(letters))} dead letters in all)",
            highlight=False,
        )
    shown = picked[-limit:]
    confluent = _confluent_sources(s)
    if as_json:
        if len(shown) < len(picked):  # stdout is the letters alone; the truncation said on stderr
            err.print(f"{len(shown)} of {len(picked)} shown (--limit {limit})", highlight=False)
        for group in shown:
            letter = group.latest
            info = letter.info
            stored = letter.stored
            # A letter of a confluent-json kind: its JSON without the header, and the header's id.
            value, schema_id = _framed(letter.value) if info.source_topic in confluent else (letter.value, None)
            extra = {"confluent_schema_id": schema_id} if info.source_topic in confluent else {}
            click.echo(
                orjson.dumps(
                    {
                        "dlq_partition": letter.partition,
                        "dlq_offset": letter.offset,
                        "reason": info.reason,
                        "detail": info.detail,
                        "source_topic": info.source_topic,
                        "source_partition": info.source_partition,
                        "source_offset": info.source_offset,
                        "origin_topic": info.origin_topic,
                        "origin_partition": info.origin_partition,
                        "origin_offset": info.origin_offset,
                        "attempts": group.attempts,
                        "replay_id": info.replay_id or None,
                        "failed_at": letter.failed_at,
                        "consumer_group": info.consumer_group,
                        "stored": None if stored is None else stored.decode("utf-8", "replace"),
                        "key": _text(letter.key, 2000),
                        "value": _text(value, 2000),
                        **extra,
                    }
                ).decode()
            )
        return
    table = Table(title=f"{topic}: {len(shown)} of {len(picked)} matching dead letters", title_justify="left")
    for col in ("failed at (UTC)", "reason", "source", "tries", "key", "detail"):
        table.add_column(col, overflow="fold")
    for group in shown:
        letter = group.latest
        info = letter.info
        where = " (original in PostgreSQL)" if letter.stored is not None else ""
        cells = (
            letter.failed_at,
            info.reason,
            f"{info.origin_topic}[{info.origin_partition}]@{info.origin_offset}",
            str(group.attempts),
            _text(letter.key, 36),
            info.detail + where,
        )
        # Keys and headers are anyone's to write: shown as text, control characters escaped.
        table.add_row(*(Text(printable(c)) for c in cells))
    out.print(table)


def _refusals(topic: str, refused: list[tool.Refusal]) -> Table:
    table = Table(title=f"{topic}: {len(refused)} record(s) refused, not sent", title_justify="left")
    for col in ("dlq record", "source header", "why"):
        table.add_column(col, overflow="fold")
    for r in refused:
        info = r.letter.info
        table.add_row(
            f"{topic}[{r.letter.partition}]@{r.letter.offset}",
            f"{info.source_topic or '-'}[{info.source_partition}]@{info.source_offset}",
            r.why,
        )
    return table


def _check_target(s: Settings, to: str) -> None:
    """`--to` names an existing topic that records are consumed from: never a dead-letter topic
    or a replay log (letters would go where no worker applies them), never a misspelt name (the
    broker would create it on the first record)."""
    from streams.kinds import all_kinds

    sources = ", ".join(k.topic for k in all_kinds(s))
    valid = f"give an existing topic that is no dead-letter or .replays topic, such as {sources}"
    if to in tool.pairs(s) or to.endswith(".dlq"):
        raise click.BadParameter(f"{to!r} is a dead-letter topic: {valid}", param_hint="--to")
    if to.endswith(".replays"):
        raise click.BadParameter(f"{to!r} is a replay log: {valid}", param_hint="--to")

    async def count() -> int:
        async with reader.Reader(s.bootstrap_list, s.kafka_security()) as r:
            return (await r.partition_counts([to])).get(to, 0)

    if not aio.run(count()):
        raise click.BadParameter(f"topic {to!r} does not exist on the broker: {valid}", param_hint="--to")


def _check_kind(s: Settings, topic: str, to: str, sources: Iterable[str]) -> None:
    """`--to` never names another kind's source topic than the one the letters of `topic` came
    from (`sources`: the settings' pair, or, for a dead-letter topic they do not pair, the letters'
    source headers): every record would be dead-lettered there, and its dead-letter topic filled
    with records of the wrong kind."""
    from streams.kinds import all_kinds

    kinds = {k.topic: k.name for k in all_kinds(s)}
    if to not in kinds:
        return
    other = sorted({t for t in sources if t in kinds and t != to})
    if other:
        raise click.BadParameter(
            f"{to!r} is the source topic of {kinds[to]} events, and letters of {topic} came from "
            f"{', '.join(repr(t) for t in other)} ({', '.join(kinds[t] for t in other)} events): give their own "
            "topic, or a topic no worker reads as another kind",
            param_hint="--to",
        )


def _plan(s: Settings, letters: list[tool.Letter], source: str | None, target: str) -> tool.Plan:
    """The replay plan; PostgreSQL is read only when some letter's original is kept there."""
    if not any(letter.stored is not None for letter in letters):
        return tool.plan(letters, source, target)
    import psycopg

    with psycopg.connect(s.dsn, connect_timeout=int(s.db_connect_timeout_s), autocommit=True) as conn:
        return tool.plan(letters, source, target, lambda *where: deadletters.load(conn, *where))


@dlq.command("replay")
@click.argument("topic")
@click.option("--reason", type=REASONS, default=None, help="Only records that failed for this reason.")
@click.option(
    "--tenant", default=None, type=names.TENANT, help="Only records keyed by this tenant (any UUID spelling)."
)
@click.option("--since", default=None, help="Only records dead-lettered since: 10m, 2h, 1d, or a timestamp.")
@click.option(
    "--to",
    "to",
    default=None,
    metavar="TOPIC",
    help="Publish to TOPIC instead of the source topic TOPIC.dlq belongs to (required for a dead-letter topic "
    "these settings do not name).",
)
@click.option(
    "--dry-run", is_flag=True, help="Count what would be replayed and list what would be refused; send nothing."
)
def replay(
    topic: str, reason: str | None, tenant: str | None, since: str | None, to: str | None, dry_run: bool
) -> None:
    """Re-publish the original bytes to the source topic TOPIC belongs to.

    The destination comes from the settings' pairs (EVENTSINK_METRICS_TOPIC and
    EVENTSINK_METRICS_DLQ_TOPIC, ...), or --to; never from a record's headers, which anyone able to
    write to TOPIC wrote. A record whose eventsink.source.topic header names another topic is
    refused (listed, and the exit status is 1), as is one whose original, kept in PostgreSQL, is
    not found or does not match its checksum.

    Replayed records go through validation and the idempotent path again: a valid event is
    applied once (never twice), a still-invalid one lands in the DLQ again, naming where it
    first failed (the eventsink.origin.* headers the replay adds), so it stays the same dead
    letter: each dead letter is replayed once, however many letters it has. The replay is
    recorded on TOPIC.replays (see `dlq replays`).
    """
    s = settings()
    since_at = _since(since)  # a usage error before anything is read
    _not_a_source(s, topic)
    source = tool.pairs(s).get(topic)
    if to is None and source is None:
        raise click.UsageError(
            f"{topic} is not a dead-letter topic of these settings ({_dlq_topics(s)}): pass --to TOPIC"
        )
    if to == topic:
        raise click.UsageError("--to names the dead-letter topic itself")
    if to is not None:
        if source is not None:
            _check_kind(s, topic, to, [source])
        _check_target(s, to)
    target = to or source or ""
    letters = tool.select(_read(s, topic), reason, tenant, since_at)
    if to is not None and source is None:
        _check_kind(s, topic, to, (letter.info.source_topic for letter in letters))
    plan = _plan(s, letters, source, target)
    if plan.refused:
        err.print(_refusals(topic, plan.refused))
    counts = f"{plan.repeats} repeats skipped, {len(plan.refused)} refused"
    if dry_run:
        err.print(f"would replay {len(plan.send)} record(s) from {topic} to {target} ({counts})", highlight=False)
        sys.exit(1 if plan.refused else 0)

    replay_id = tool.new_replay_id()
    log = tool.log_topic(topic)
    record = tool.ReplayRecord(
        id=replay_id,
        at=tool.utc_text(datetime.now(UTC).isoformat()),
        dlq_topic=topic,
        to=target,
        filters={"reason": reason, "tenant": tenant, "since": since},
        sent=0,
        repeats=plan.repeats,
        refused=len(plan.refused),
        user=_user(),
        host=socket.gethostname(),
        origins=[item.letter.info.origin for item in plan.send],
        status="started",
        planned=len(plan.send),
    )
    run = _Run(record)

    def acknowledged(fut: Any) -> None:
        if not fut.cancelled() and fut.exception() is None:
            run.acknowledged += 1

    async def go() -> None:
        # Where the replay is recorded exists, and the replay is recorded as started, before
        # anything is sent: a replay that could not be recorded sends nothing, and one killed
        # half-way is on record with what it set out to send.
        await ensure_topics(s.bootstrap_list, [TopicSpec(log, 1, config=DLQ_CONFIG)], security=s.kafka_security())
        run.stop_on_signals(asyncio.get_running_loop(), asyncio.current_task())
        with progress_bar() as bar:
            task = bar.add_task(f"replaying {topic}", total=len(plan.send))
            # A letter kept in PostgreSQL was too large for the topic uncompressed: its original
            # producer had compressed it. The replay compresses too, and lets the broker judge
            # the compressed batch (the client would refuse the record's uncompressed size).
            async with Publisher(
                s.bootstrap_list, compression_type="gzip", max_request_size=REPLAY_MAX_BYTES, **s.kafka_security()
            ) as pub:
                try:
                    await _record(pub, log, record)
                    run.started = True
                    for item in plan.send:
                        fut = await pub.publish_raw(item.topic, item.key, item.value, list(item.lineage(replay_id)))  # type: ignore[arg-type]
                        fut.add_done_callback(acknowledged)
                        run.handed += 1
                        bar.update(task, completed=run.acknowledged)
                    await pub.flush()  # every record acknowledged before the replay is recorded as done
                    bar.update(task, completed=run.acknowledged)
                    run.end = run.ending("done")
                    await _record(pub, log, run.end)
                    run.end_recorded = True
                except BaseException as exc:  # a signal (the task cancelled), or the broker's error
                    run.finishing = True  # further signals wait for the end to be recorded
                    if run.end is None:
                        stopped = isinstance(exc, asyncio.CancelledError | KeyboardInterrupt)
                        with contextlib.suppress(BaseException):
                            # What was handed over may still be acknowledged: a few seconds for it.
                            await asyncio.wait_for(asyncio.shield(pub.flush()), FINISH_S)
                        error = "" if stopped else scrub(f"{type(exc).__name__}: {exc}")[:300]
                        run.end = run.ending("interrupted" if stopped else "failed", error)
                        with contextlib.suppress(BaseException):
                            await asyncio.wait_for(_record(pub, log, run.end), FINISH_S)
                            run.end_recorded = True
                    raise

    try:
        aio.run(go())
    except (KeyboardInterrupt, asyncio.CancelledError):
        run.say_stopped(log)
        sys.exit(TERMINATED if run.signal == signal.SIGTERM else INTERRUPTED)
    except BaseException:
        run.say_stopped(log)
        raise
    err.print(
        f"replayed {run.acknowledged} record(s) from {topic} to {target} ({counts}); "
        f"recorded as replay {replay_id} on {log}",
        highlight=False,
    )
    sys.exit(1 if plan.refused else 0)


# How long an interrupted or failed replay waits for acknowledgements, then for its record.
FINISH_S = 10.0
# Exit statuses of a replay stopped by Ctrl-C (SIGINT) and by SIGTERM (128 + the signal).
INTERRUPTED, TERMINATED = 130, 143


async def _record(pub: Publisher, log: str, record: tool.ReplayRecord) -> None:
    await pub.publish_raw(log, record.id.encode(), record.to_json())
    await pub.flush()


class _Run:
    """One replay as it goes: what it sent, how it ended, what of that is on record."""

    def __init__(self, started: tool.ReplayRecord) -> None:
        self.record = started
        self.started = False  # its start is on record (acknowledged by the broker)
        self.handed = 0  # records handed to the client
        self.acknowledged = 0  # of them, acknowledged by the broker
        self.end: tool.ReplayRecord | None = None
        self.end_recorded = False
        self.finishing = False
        self.signal: signal.Signals | None = None

    def ending(self, status: str, error: str = "") -> tool.ReplayRecord:
        # The origins are on the start's record (`tool.latest` carries them over): the end's
        # stays small, quick to build and to send even for a replay of a million letters.
        return replace(
            self.record,
            status=status,
            sent=self.acknowledged,
            unconfirmed=self.handed - self.acknowledged,
            error=error,
            origins=[],
        )

    def stop_on_signals(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any] | None) -> None:
        """SIGINT and SIGTERM stop the replay the same way (a service manager's stop, `timeout`):
        the sending is cancelled and the end recorded. A signal while the end is being recorded
        (at most 2 x FINISH_S) is said and otherwise waits: the record is what the operator
        needs next."""

        def on_signal(sig: signal.Signals) -> None:
            if self.signal is None and task is not None:
                self.signal = sig
                task.cancel()
            elif self.finishing:
                err.print(f"recording how the replay ended (at most {2 * FINISH_S:.0f} s)...", highlight=False)

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform / thread
                loop.add_signal_handler(sig, on_signal, sig)

    def say_stopped(self, log: str) -> None:
        """What a replay that did not finish sent, and what of it is on record (stderr)."""
        r = self.record
        if self.handed == 0 and not self.started:
            on_record = " (its end is recorded)" if self.end_recorded else ""
            err.print(
                f"nothing replayed from {r.dlq_topic}: replay {r.id} stopped before it sent{on_record}", highlight=False
            )
            return
        status = self.end.status if self.end is not None else "stopped"
        where = (
            f"recorded on {log}"
            if self.end_recorded
            else f"only its start is recorded on {log} (its end could not be written)"
        )
        err.print(
            f"replay {r.id} {status} after {self.acknowledged} of {r.planned} record(s) acknowledged by the broker "
            f"({self.handed - self.acknowledged} more sent without acknowledgement) to {r.to}; {where}, see "
            f"`eventsink dlq replays {r.dlq_topic}`. Replaying again sends them again: each is applied once, or "
            "dead-lettered again as the same dead letter",
            highlight=False,
        )


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return f"uid {os.getuid()}"


@dlq.command("replays")
@click.argument("topic")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per replay.")
def replays(topic: str, as_json: bool) -> None:
    """The replays of dead-letter topic TOPIC: when, by whom, to where, what they sent.

    Each `dlq replay` records itself on TOPIC.replays, as started before it sends anything and
    as done, interrupted or failed at its end; the records it sent carry its id in their
    eventsink.replay.id header (and dead letters of them that failed again, too). A replay shown
    as "started" was killed before it could record its end: up to its planned count was sent.
    """
    s = settings()
    _read(s, topic)  # a usage error unless TOPIC is a dead-letter topic
    try:
        records = aio.run(reader.read_all(s.bootstrap_list, tool.log_topic(topic), security=s.kafka_security()))
    except LookupError:
        records = []
    found = tool.latest(r for r in (tool.ReplayRecord.from_json(x.value) for x in records) if r is not None)
    if as_json:
        for r in found:
            click.echo(r.to_json().decode())
        return
    table = Table(title=f"{topic}: {len(found)} replay(s) recorded", title_justify="left")
    for col in ("replay", "at (UTC)", "by", "to", "filters", "status", "sent", "repeats", "refused"):
        table.add_column(col, overflow="fold")
    for r in found:
        filters = " ".join(f"--{k} {v}" for k, v in r.filters.items() if v) or "-"
        status = _status(r)
        cells = (r.id, r.at, f"{r.user}@{r.host}", r.to, filters, status, _sent(r), str(r.repeats), str(r.refused))
        table.add_row(*(Text(printable(str(c))) for c in cells))
    out.print(table)


def _status(r: tool.ReplayRecord) -> str:
    if r.status == "started":
        return "started, no end recorded (killed?)"
    return f"{r.status}: {r.error}" if r.error else r.status


def _sent(r: tool.ReplayRecord) -> str:
    if r.status == "started":
        return f"up to {r.planned}"
    if r.status == "done":
        return str(r.sent)
    unconfirmed = f" (+{r.unconfirmed} unacknowledged)" if r.unconfirmed else ""
    return f"{r.sent} of {r.planned}{unconfirmed}"
