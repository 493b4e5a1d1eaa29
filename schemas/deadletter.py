"""The dead-letter contract: why an event was not applied, and where it came from.

A dead-letter record carries the original key and value bytes untouched; everything eventsink
adds travels in headers, so the record can be replayed to its source topic as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

HEADER_PREFIX = "eventsink."
H_REASON = "eventsink.reason"
H_DETAIL = "eventsink.detail"
H_SOURCE_TOPIC = "eventsink.source.topic"
H_SOURCE_PARTITION = "eventsink.source.partition"
H_SOURCE_OFFSET = "eventsink.source.offset"
H_FAILED_AT = "eventsink.failed_at"
H_CONSUMER_GROUP = "eventsink.consumer_group"
# Set when the record on the DLQ topic is not the whole original (too large for the topic, or
# neither key nor value): the original is in PostgreSQL (`sinks.core.deadletters`), found by
# consumer group, source topic, partition and offset. Value: "postgres".
H_STORED = "eventsink.stored"
H_ORIGINAL_SIZE = "eventsink.original.size"  # bytes of the original value
H_ORIGINAL_SHA256 = "eventsink.original.sha256"  # hex digest of the original value
STORED_IN_POSTGRES = b"postgres"

MAX_DETAIL = 2000


class Reason(StrEnum):
    """Why a record went to the dead-letter topic (a stable, machine-readable code)."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    INVALID_EVENT = "invalid_event"
    KEY_MISMATCH = "key_mismatch"
    TOO_LARGE = "too_large"
    TENANT_MISMATCH = "tenant_mismatch"
    DB_REJECTED = "db_rejected"
    # A top-level field the contract does not know, with the kind's policy `reject`.
    UNKNOWN_FIELD = "unknown_field"
    # schema_version newer than the worker knows: replayable once workers that know it run.
    UNSUPPORTED_VERSION = "unsupported_version"
    # Value format confluent-json: the value lacks Confluent's header (magic byte 0, schema id).
    INVALID_FRAME = "invalid_frame"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record that could not be applied."""

    reason: Reason
    detail: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    failed_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def dlq_headers(self, consumer_group: str) -> list[tuple[str, bytes | None]]:
        """Original headers first (minus any earlier eventsink ones), then ours."""
        kept = [(k, v) for k, v in self.headers if not k.startswith(HEADER_PREFIX)]
        return [
            *kept,
            (H_REASON, self.reason.value.encode()),
            (H_DETAIL, self.detail[:MAX_DETAIL].encode("utf-8", "replace")),
            (H_SOURCE_TOPIC, self.topic.encode()),
            (H_SOURCE_PARTITION, str(self.partition).encode()),
            (H_SOURCE_OFFSET, str(self.offset).encode()),
            (H_FAILED_AT, self.failed_at.isoformat().encode()),
            (H_CONSUMER_GROUP, consumer_group.encode()),
        ]


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    """What a reader of a dead-letter topic learns from one record's headers."""

    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    failed_at: str
    consumer_group: str

    @classmethod
    def from_headers(
        cls, headers: list[tuple[str, bytes | None]] | tuple[tuple[str, bytes | None], ...]
    ) -> DeadLetterInfo:
        h = {k: (v or b"").decode("utf-8", "replace") for k, v in headers if k.startswith(HEADER_PREFIX)}
        return cls(
            reason=h.get(H_REASON, ""),
            detail=h.get(H_DETAIL, ""),
            source_topic=h.get(H_SOURCE_TOPIC, ""),
            source_partition=_int(h.get(H_SOURCE_PARTITION)),
            source_offset=_int(h.get(H_SOURCE_OFFSET)),
            failed_at=h.get(H_FAILED_AT, ""),
            consumer_group=h.get(H_CONSUMER_GROUP, ""),
        )


def _int(text: str | None) -> int:
    """A header's integer, or -1 when it is missing or not one (headers are anyone's to write)."""
    try:
        return int(text) if text is not None else -1
    except ValueError:
        return -1
