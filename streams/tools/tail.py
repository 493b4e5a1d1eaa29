"""Reading a topic the way an analyst does: decoded, filtered, never disturbing the workers.

Through `streams.tools.reader.Reader`: no group, nothing joined, nothing committed.
Invalid records are shown with their error; dead-letter records with their reason headers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson
from pydantic import BaseModel

from schemas.codec import Decoded, Rejected, decode
from schemas.deadletter import H_REASON, H_REPLAY_ID, HEADER_PREFIX, DeadLetterInfo
from streams.tools.reader import Reader, Start, Unreadable

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`10m`, `2h`, `1.5d`, `30s`, or an ISO 8601 / RFC 3339 timestamp."""
    match = _DURATION.match(text.strip())
    if match:
        try:
            return (now or datetime.now(UTC)) - timedelta(**{_UNITS[match[2]]: float(match[1])})
        except OverflowError:  # a duration reaching before year 1
            raise ValueError(
                f"--since {text!r} reaches before year 1: give a shorter duration or a timestamp"
            ) from None
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since takes a duration such as 10m, 2h, 1d or a timestamp, not {text!r}") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _canonical(tenant: str | None) -> str | None:
    try:
        return str(UUID(tenant)) if tenant else None
    except ValueError:
        return None


@dataclass
class Filters:
    tenant: str | None = None
    grep: str | None = None

    def match(self, row: TailRow) -> bool:
        # A record's tenant in any spelling a worker accepts in a key (`schemas.codec`), as `tenant`
        # is (canonical UUID text, `streams.cli.names.tenant`).
        if self.tenant is not None and _canonical(row.tenant) != self.tenant:
            return False
        return self.grep is None or self.grep in row.text


@dataclass
class TailRow:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # the record's timestamp as the producer set it: any 64-bit integer
    key: bytes | None
    value: bytes | None
    result: Decoded | Rejected
    dlq: DeadLetterInfo | None = None
    text: str = field(default="", repr=False)
    # A record a replay re-published (`eventsink dlq replay`): the replay's id and where the
    # record first failed; not a dead letter itself.
    replayed: tuple[str, tuple[str, int, int]] | None = None

    @property
    def timestamp(self) -> datetime | None:
        """The record's time, or None when it is outside years 1 to 9999 (a producer may set any)."""
        try:
            return EPOCH + timedelta(milliseconds=self.timestamp_ms)
        except OverflowError:
            return None

    @property
    def tenant(self) -> str | None:
        if isinstance(self.result, Decoded):
            return str(self.result.event.tenant_id)  # type: ignore[attr-defined]
        return self.key.decode("utf-8", "replace") if self.key else None

    def as_dict(self) -> dict[str, Any]:
        ok = isinstance(self.result, Decoded)
        out: dict[str, Any] = {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            # milliseconds since the epoch where no date can show them
            "timestamp": at.isoformat().replace("+00:00", "Z") if (at := self.timestamp) else self.timestamp_ms,
            "key": self.key.decode("utf-8", "replace") if self.key is not None else None,
            "valid": ok,
            "event": _as_stored(self.result.event) if ok else None,  # type: ignore[union-attr]
            "error": None if ok else {"reason": self.result.reason.value, "detail": self.result.detail},  # type: ignore[union-attr]
        }
        if not ok:
            out["value"] = self.value.decode("utf-8", "replace") if self.value is not None else None
        if self.dlq is not None:
            out["dlq"] = {
                "reason": self.dlq.reason,
                "detail": self.dlq.detail,
                "source_topic": self.dlq.source_topic,
                "source_partition": self.dlq.source_partition,
                "source_offset": self.dlq.source_offset,
                "failed_at": self.dlq.failed_at,
            }
        if self.replayed is not None:
            replay_id, (topic, partition, offset) = self.replayed
            out["replayed"] = {
                "replay_id": replay_id,
                "origin": {"topic": topic, "partition": partition, "offset": offset},
            }
        return out


def _as_stored(event: BaseModel) -> dict[str, Any]:
    """The event's fields, with the unknown fields it keeps under `attributes` (as in its row)."""
    out = event.model_dump(mode="json")
    kept = getattr(event, "attributes", None)
    if kept:
        out["attributes"] = kept
    return out


def to_row(
    record: Any, model: type[BaseModel], context: dict[str, Any] | None, decoder: Callable[..., Any] = decode
) -> TailRow:
    """`decoder`: the kind's (`streams.kinds.Kind.decode`, which knows its value format)."""
    headers = list(record.headers or ())
    ours = DeadLetterInfo.from_headers(headers) if any(k.startswith(HEADER_PREFIX) for k, _ in headers) else None
    # A dead letter names its reason; a replayed record carries only its lineage (origin, replay id).
    dlq = ours if ours is not None and any(k == H_REASON for k, _ in headers) else None
    replay_id = next((v for k, v in headers if k == H_REPLAY_ID), None)
    replayed = (replay_id.decode("utf-8", "replace"), ours.origin) if dlq is None and ours and replay_id else None
    result = decoder(record.value, model, record.key, context)
    row = TailRow(
        record.topic,
        record.partition,
        record.offset,
        record.timestamp,
        record.key,
        record.value,
        result,
        dlq,
        replayed=replayed,
    )
    row.text = (record.value or b"").decode("utf-8", "replace") + " " + (dlq.detail if dlq else "")
    return row


async def tail(
    bootstrap: list[str],
    topic: str,
    model: type[BaseModel],
    emit: Callable[[TailRow], None],
    *,
    start: Start,
    follow: bool = False,
    partitions: Iterable[int] | None = None,
    filters: Filters | None = None,
    context: dict[str, Any] | None = None,
    decoder: Callable[..., Any] = decode,
    security: Mapping[str, Any] | None = None,
    on_unreadable: Callable[[Unreadable], None] | None = None,
    on_live: Callable[[], None] | None = None,
) -> int:
    """Print matching records: the backlog in time order across partitions, then (with
    `follow`) new records as they come, `on_live` being called in between. Returns how many
    were printed. A record batch the Kafka client cannot read is stepped over and told to
    `on_unreadable`."""
    filters = filters or Filters()
    backlog: list[TailRow] | None = []
    shown = 0
    async with Reader(bootstrap, security) as reader:
        async for chunk in reader.read(topic, start=start, partitions=partitions, follow=follow):
            while reader.unreadable and on_unreadable is not None:
                on_unreadable(reader.unreadable.pop(0))
            rows = [row for row in (to_row(r, model, context, decoder) for r in chunk) if filters.match(row)]
            if backlog is None:
                for row in rows:
                    emit(row)
                shown += len(rows)
            elif chunk:
                backlog.extend(rows)
            else:  # caught up: the backlog in time order across partitions, then live records
                shown += _flush(_window(backlog, start), emit)
                backlog = None
                if on_live is not None:
                    on_live()
    if backlog:
        shown += _flush(_window(backlog, start), emit)
    return shown


def _window(rows: list[TailRow], start: Start) -> list[TailRow]:
    """The backlog `start` asked for, whatever the broker's offsets said: some brokers (Tansu)
    report a partition's end as its last record batch's first offset + 1, and find no offset
    for a time, so reading may begin earlier than asked. Trimmed here by the records themselves."""
    if start.from_beginning:
        return rows
    if start.since is not None:
        since_ms = start.since.timestamp() * 1000
        return [r for r in rows if r.timestamp_ms >= since_ms]
    keep = start.last or 0
    by_partition: dict[int, list[TailRow]] = {}
    for row in rows:
        by_partition.setdefault(row.partition, []).append(row)
    return [r for part in by_partition.values() for r in sorted(part, key=lambda r: r.offset)[-keep:] if keep]


def _flush(rows: list[TailRow], emit: Callable[[TailRow], None]) -> int:
    for row in sorted(rows, key=lambda r: (r.timestamp_ms, r.partition, r.offset)):
        emit(row)
    return len(rows)


def json_line(row: TailRow) -> str:
    return orjson.dumps(row.as_dict()).decode()
