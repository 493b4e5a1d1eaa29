"""`eventsink dlq list|replay`: what failed, why, where from; and sending it back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import click
import orjson
from rich.table import Table
from rich.text import Text

from schemas.codec import printable
from schemas.deadletter import HEADER_PREFIX, DeadLetterInfo
from streams.cli.console import err, out, progress_bar, settings
from streams.publish.publisher import Publisher
from streams.tools import reader
from streams.tools.tail import parse_since


def _matching(
    records: Iterable[Any], reason: str | None, tenant: str | None, since: datetime | None
) -> list[tuple[Any, DeadLetterInfo]]:
    picked = []
    for r in records:
        info = DeadLetterInfo.from_headers(list(r.headers or ()))
        if reason and info.reason != reason:
            continue
        if tenant and (r.key or b"").decode("utf-8", "replace").lower() != tenant.lower():
            continue
        if since and r.timestamp < since.timestamp() * 1000:
            continue
        picked.append((r, info))
    return picked


def _since(value: str | None) -> datetime | None:
    try:
        return parse_since(value) if value else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


def _read(topic: str) -> list[Any]:
    try:
        s = settings()
        return asyncio.run(reader.read_all(s.bootstrap_list, topic, security=s.kafka_security()))
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def dlq() -> None:
    """Inspect and replay dead-letter topics."""


@dlq.command("list")
@click.argument("topic")
@click.option("--reason", default=None, help="Only this reason (invalid_json, invalid_event, tenant_mismatch, ...).")
@click.option("--tenant", default=None, help="Only records keyed by this tenant.")
@click.option("--since", default=None, help="Only records dead-lettered since: 10m, 2h, 1d, or a timestamp.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
def list_(topic: str, reason: str | None, tenant: str | None, since: str | None, limit: int, as_json: bool) -> None:
    """What failed, why, and where it came from (newest last)."""
    picked = _matching(_read(topic), reason, tenant, _since(since))
    shown = sorted(picked, key=lambda p: p[0].timestamp)[-limit:]
    if as_json:
        for r, info in shown:
            click.echo(
                orjson.dumps(
                    {
                        "dlq_partition": r.partition,
                        "dlq_offset": r.offset,
                        "reason": info.reason,
                        "detail": info.detail,
                        "source_topic": info.source_topic,
                        "source_partition": info.source_partition,
                        "source_offset": info.source_offset,
                        "failed_at": info.failed_at,
                        "key": (r.key or b"").decode("utf-8", "replace"),
                        "value": (r.value or b"").decode("utf-8", "replace")[:2000],
                    }
                ).decode()
            )
        return
    table = Table(title=f"{topic}: {len(shown)} of {len(picked)} matching", title_justify="left")
    for col in ("failed at", "reason", "source", "key", "detail"):
        table.add_column(col, overflow="fold")
    for r, info in shown:
        cells = (
            info.failed_at[:26],
            info.reason,
            f"{info.source_topic}[{info.source_partition}]@{info.source_offset}",
            (r.key or b"").decode("utf-8", "replace")[:36],
            info.detail,
        )
        # Keys and headers are anyone's to write: shown as text, control characters escaped.
        table.add_row(*(Text(printable(c)) for c in cells))
    out.print(table)


@dlq.command("replay")
@click.argument("topic")
@click.option("--reason", default=None, help="Only records that failed for this reason.")
@click.option("--tenant", default=None, help="Only records keyed by this tenant.")
@click.option("--since", default=None, help="Only records dead-lettered since: 10m, 2h, 1d, or a timestamp.")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; send nothing.")
def replay(topic: str, reason: str | None, tenant: str | None, since: str | None, dry_run: bool) -> None:
    """Re-publish the original bytes to their source topic.

    They go through validation and the idempotent path again: a valid event is applied once
    (never twice), a still-invalid one lands in the DLQ again. A record dead-lettered twice is
    replayed once.
    """
    picked = _matching(_read(topic), reason, tenant, _since(since))
    unique: dict[tuple[str, int, int], tuple[Any, DeadLetterInfo]] = {}
    for r, info in picked:
        unique.setdefault((info.source_topic, info.source_partition, info.source_offset), (r, info))
    if dry_run:
        err.print(f"would replay {len(unique)} record(s) from {topic} ({len(picked) - len(unique)} repeats skipped)")
        return
    s = settings()

    async def go() -> int:
        sent = 0
        with progress_bar() as bar:
            task = bar.add_task(f"replaying {topic}", total=len(unique))
            async with Publisher(s.bootstrap_list, **s.kafka_security()) as pub:
                for r, info in unique.values():
                    headers = [(k, v) for k, v in (r.headers or ()) if not k.startswith(HEADER_PREFIX)]
                    await pub.publish_raw(info.source_topic, r.key, r.value, headers)
                    sent += 1
                    bar.update(task, completed=sent)
        return sent

    sent = asyncio.run(go())
    err.print(
        f"replayed {sent} record(s) from {topic} to their source topics ({len(picked) - len(unique)} repeats skipped)"
    )
