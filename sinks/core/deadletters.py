"""Dead letters the dead-letter topic cannot carry as they are, kept whole in PostgreSQL.

`store` runs inside the batch's transaction (so the original bytes exist exactly when the batch
that dead-lettered them committed); `load` is what `eventsink dlq replay` reads back. A record is
identified as everywhere else: (consumer group, source topic, partition, offset).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import psycopg

from schemas.deadletter import DeadLetter

STORE = """
INSERT INTO eventsink.dead_letter_payloads
    (consumer_group, topic, partition, kafka_offset, reason, key, value, headers)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (consumer_group, topic, partition, kafka_offset) DO NOTHING
"""
LOAD = """
SELECT key, value, headers FROM eventsink.dead_letter_payloads
WHERE consumer_group = %s AND topic = %s AND partition = %s AND kafka_offset = %s
"""


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """The original record, byte for byte: key, value (None where the record had none), headers."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]


def _headers_json(headers: tuple[tuple[str, bytes | None], ...]) -> psycopg.types.json.Jsonb:
    return psycopg.types.json.Jsonb(
        [[k, None if v is None else base64.b64encode(v).decode("ascii")] for k, v in headers]
    )


async def store(conn: psycopg.AsyncConnection, consumer_group: str, dead: DeadLetter) -> None:
    """Keep the whole original record of `dead` (in the caller's transaction)."""
    await conn.execute(
        STORE,
        (
            consumer_group,
            dead.topic,
            dead.partition,
            dead.offset,
            dead.reason.value,
            dead.key,
            dead.value,
            _headers_json(dead.headers),
        ),
    )


def load(conn: psycopg.Connection, consumer_group: str, topic: str, partition: int, offset: int) -> StoredRecord | None:
    """The original record a dead letter stands for, or None if this database does not hold it."""
    row = conn.execute(LOAD, (consumer_group, topic, partition, offset)).fetchone()
    if row is None:
        return None
    key, value, headers = row
    return StoredRecord(
        None if key is None else bytes(key),
        None if value is None else bytes(value),
        tuple((k, None if v is None else base64.b64decode(v)) for k, v in headers),
    )
