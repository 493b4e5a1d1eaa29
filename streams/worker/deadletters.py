"""Publishing dead letters: delivered (acknowledged by the broker) before the batch commits.

Every record's dead letter is publishable, whatever the record: one the dead-letter topic can
carry as it is goes there byte for byte, headers included. One it cannot (larger than the
producer's request limit once our headers are added, or with neither key nor value, which
Kafka producers refuse) is kept whole in PostgreSQL in the batch's own transaction
(`sinks.core.deadletters`), and the topic gets a marker: the key (or its first bytes), the first
`PREVIEW_BYTES` of the value, the reason headers, and `eventsink.stored: postgres` with the
original value's size and SHA-256. `eventsink dlq replay` sends the original bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import psycopg
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from schemas.deadletter import (
    H_ORIGINAL_SHA256,
    H_ORIGINAL_SIZE,
    H_STORED,
    HEADER_PREFIX,
    STORED_IN_POSTGRES,
    DeadLetter,
)
from sinks.core import deadletters
from sinks.errors import TransientSinkError
from streams.worker import telemetry

PREVIEW_BYTES = 16 * 1024
MAX_KEY_BYTES = 4 * 1024

Headers = list[tuple[str, bytes | None]]


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """What the Kafka producer counts against its request limit (aiokafka's own estimate)."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers))


def marker(dead: DeadLetter, consumer_group: str) -> tuple[bytes | None, bytes, Headers]:
    """The DLQ record standing for a dead letter kept in PostgreSQL: key, value preview, headers."""
    value = dead.value or b""
    ours = [(k, v) for k, v in dead.dlq_headers(consumer_group) if k.startswith(HEADER_PREFIX)]
    headers: Headers = [
        *ours,
        (H_STORED, STORED_IN_POSTGRES),
        (H_ORIGINAL_SIZE, str(len(value)).encode()),
        (H_ORIGINAL_SHA256, hashlib.sha256(value).hexdigest().encode()),
    ]
    key = dead.key[:MAX_KEY_BYTES] if dead.key is not None else None
    return key, value[:PREVIEW_BYTES], headers


class DeadLetterPublisher:
    """The sink's dead-letter handler for one kind: publish (or store and mark) each dead letter,
    wait for the broker's acknowledgements, and raise `TransientSinkError` if any failed."""

    def __init__(
        self,
        app: Any,
        dlq_topic: str,
        source_topic: str,
        consumer_group: str,
        max_record_bytes: int,
        timeout_s: float = 30.0,
    ) -> None:
        self.app = app
        self.dlq_topic = dlq_topic
        self.source_topic = source_topic
        self.group = consumer_group
        self.max_record_bytes = max_record_bytes
        self.timeout_s = timeout_s

    async def __call__(self, dead: list[DeadLetter], conn: psycopg.AsyncConnection) -> None:
        try:
            await asyncio.wait_for(self._send_all(dead, conn), self.timeout_s)
        except (TransientSinkError, psycopg.Error):
            raise
        except Exception as exc:  # the broker refused or did not answer: the batch is retried
            raise TransientSinkError(
                f"dead letters not delivered to {self.dlq_topic}: {type(exc).__name__}: {exc}"
            ) from exc
        for d in dead:
            telemetry.DEAD_LETTERS.labels(self.source_topic, d.reason.value).inc()

    async def _send_all(self, dead: list[DeadLetter], conn: psycopg.AsyncConnection) -> None:
        producer = self.app.producer
        pending = []
        for d in dead:
            key, value, headers = d.key, d.value, d.dlq_headers(self.group)
            if (key is None and value is None) or record_size(key, value, headers) > self.max_record_bytes:
                await deadletters.store(conn, self.group, d)
                key, value, headers = marker(d, self.group)
            pending.append(await producer.send(self.dlq_topic, key, value, None, None, headers))
        # Any failure raises here, inside the batch transaction, which then rolls back.
        await asyncio.gather(*pending)
