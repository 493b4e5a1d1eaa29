"""What a record must have become, and what did become of it: rows and dead letters, exactly.

`payload(kind, tenant, dedupe_id, **change)` builds a valid payload of a kind. `expected(kind,
payload)` says what its row must hold, computed here (the UTC instant by arithmetic on the text,
`tests.strategies.stamp_of`; JSON numbers as decimals), never by the schemas. `rows(dsn, kind,
tenants)` reads the stored rows back in the same shape. `dead_letters(bootstrap, dlq_topic)` is
a DLQ topic by source (partition, offset).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg

from schemas.deadletter import HEADER_PREFIX
from tests.helpers import TopicRecord, read_topic
from tests.strategies import json_decimal, json_number, stamp_of

AT = "2024-05-01T12:00:00.123456Z"


def payload(kind: str, tenant: str, dedupe_id: str, **change: Any) -> dict[str, Any]:
    """A valid payload of `kind`; `change` replaces fields (None removes one)."""
    body: dict[str, Any] = {"tenant_id": tenant, "dedupe_id": dedupe_id, "occurred_at": AT}
    if kind == "metric":
        body |= {"name": "cpu", "value": 12.5, "tags": {"host": "a"}}
    elif kind == "chat":
        body |= {"conversation_id": str(uuid.uuid5(uuid.UUID(tenant), "conversation")), "role": "user"}
        body |= {"content": f"hello {dedupe_id}"}
    else:
        body |= {"analysis_id": str(uuid.uuid5(uuid.UUID(tenant), dedupe_id)), "status": "pending"}
    body |= change
    return {k: v for k, v in body.items() if v is not None}


COLUMNS = {
    "metric": ("name", "value", "unit", "tags"),
    "chat": ("session_id", "role", "content", "model", "prompt_tokens", "completion_tokens"),
    "analysis": ("analysis_id", "status", "progress", "result", "error", "kind", "media_url"),
}
JSON_COLUMNS = {"tags", "result"}


def expected(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The row a valid payload must give: its columns, with `occurred_at` as UTC text."""
    stamp = stamp_of(body["occurred_at"])
    assert stamp.utc is not None, body["occurred_at"]
    row: dict[str, Any] = {"occurred_at": stamp.utc.replace(tzinfo=None).isoformat(timespec="microseconds")}
    for column in COLUMNS[kind]:
        source = {"session_id": "conversation_id"}.get(column, column)
        value = body.get(source)
        if column in ("session_id", "analysis_id"):
            value = uuid.UUID(value)
        elif column == "value":
            value = float(value)
        elif column in JSON_COLUMNS and value is not None:
            value = json_number(value)
        row[column] = value
    return row


_TABLE = {"metric": "eventsink.metrics_raw", "chat": "eventsink.chat_messages", "analysis": "eventsink.analysis_events"}


def rows(dsn: str, kind: str, tenants: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """Stored rows by (tenant, dedupe_id), in the shape of `expected`."""
    columns = [f"{c}::text" if c in JSON_COLUMNS else c for c in COLUMNS[kind]]
    sql = (
        f"SELECT tenant_id::text, dedupe_id, {', '.join(columns)}, "
        "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') "
        f"FROM {_TABLE[kind]} WHERE tenant_id = ANY(%s::uuid[])"
    )
    found: dict[tuple[str, str], dict[str, Any]] = {}
    with psycopg.connect(dsn) as conn:
        for tenant, dedupe_id, *values, at in conn.execute(sql, (tenants,)):
            row = dict(zip(COLUMNS[kind], values, strict=True))
            for column in JSON_COLUMNS & set(row):
                if row[column] is not None:
                    row[column] = json_decimal(row[column])
            row["occurred_at"] = at
            found[(tenant, dedupe_id)] = row
    return found


def dead_letters(bootstrap: str, dlq_topic: str) -> dict[tuple[int, int], list[TopicRecord]]:
    """A DLQ topic's records by their source (partition, offset) (a list: a dead letter may be
    published twice when a worker dies between publishing and committing)."""
    out: dict[tuple[int, int], list[TopicRecord]] = {}
    for record in asyncio.run(read_topic(bootstrap, dlq_topic)):
        info = record.info
        out.setdefault((info.source_partition, info.source_offset), []).append(record)
    return out


def original_headers(record: TopicRecord) -> list[tuple[str, bytes | None]]:
    """A dead letter's headers without the ones eventsink added."""
    return [(k, v) for k, v in record.headers if not k.startswith(HEADER_PREFIX)]


def stored_payload(dsn: str, group: str, topic: str, partition: int, offset: int) -> tuple[Any, ...] | None:
    """The whole original record eventsink kept in PostgreSQL for a dead letter, if any."""
    from sinks.core.deadletters import load

    with psycopg.connect(dsn) as conn:
        record = load(conn, group, topic, partition, offset)
    return None if record is None else (record.key, record.value, record.headers)
