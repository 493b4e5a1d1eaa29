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
# Lineage: set by `eventsink dlq replay` on the record it re-publishes, and carried by the dead
# letter of a replayed record that fails again. The position of the record's FIRST failure, so
# that every later failure of the same bytes is recognised as the same dead letter (the source
# headers above stay where the failing record really was: the ledger and verify count by them).
H_ORIGIN_TOPIC = "eventsink.origin.topic"
H_ORIGIN_PARTITION = "eventsink.origin.partition"
H_ORIGIN_OFFSET = "eventsink.origin.offset"
H_REPLAY_ID = "eventsink.replay.id"  # which replay re-published the record (see `dlq replays`)
LINEAGE = (H_ORIGIN_TOPIC, H_ORIGIN_PARTITION, H_ORIGIN_OFFSET, H_REPLAY_ID)
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
        """Original headers first, byte for byte (minus any eventsink ones), then ours; a
        replayed record's lineage is carried on (see `lineage`)."""
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
            *lineage(self.headers),
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
    # Where the record first failed: the lineage a replay set, else the source itself.
    origin_topic: str = ""
    origin_partition: int = -1
    origin_offset: int = -1
    replay_id: str = ""

    @property
    def origin(self) -> tuple[str, int, int]:
        return (self.origin_topic, self.origin_partition, self.origin_offset)

    @property
    def replayed(self) -> bool:
        """Whether this letter is of a record a replay re-published (it names an origin)."""
        return self.origin != (self.source_topic, self.source_partition, self.source_offset)

    @classmethod
    def from_headers(
        cls, headers: list[tuple[str, bytes | None]] | tuple[tuple[str, bytes | None], ...]
    ) -> DeadLetterInfo:
        h = {k: (v or b"").decode("utf-8", "replace") for k, v in headers if k.startswith(HEADER_PREFIX)}
        line = {k: (v or b"").decode("utf-8", "replace") for k, v in lineage(tuple(headers))}
        source = (h.get(H_SOURCE_TOPIC, ""), _int(h.get(H_SOURCE_PARTITION)), _int(h.get(H_SOURCE_OFFSET)))
        origin = (line[H_ORIGIN_TOPIC], int(line[H_ORIGIN_PARTITION]), int(line[H_ORIGIN_OFFSET])) if line else source
        return cls(
            reason=h.get(H_REASON, ""),
            detail=h.get(H_DETAIL, ""),
            source_topic=h.get(H_SOURCE_TOPIC, ""),
            source_partition=_int(h.get(H_SOURCE_PARTITION)),
            source_offset=_int(h.get(H_SOURCE_OFFSET)),
            failed_at=h.get(H_FAILED_AT, ""),
            consumer_group=h.get(H_CONSUMER_GROUP, ""),
            origin_topic=origin[0],
            origin_partition=origin[1],
            origin_offset=origin[2],
            replay_id=line.get(H_REPLAY_ID, ""),
        )


def lineage(headers: tuple[tuple[str, bytes | None], ...]) -> list[tuple[str, bytes | None]]:
    """The lineage headers of a record a replay re-published, as they came; none unless each
    of topic, partition and offset is there once, well formed (headers are anyone's to write:
    a malformed lineage is dropped, and the letter stands for itself)."""
    found: dict[str, list[bytes | None]] = {}
    for k, v in headers:
        if k in LINEAGE:
            found.setdefault(k, []).append(v)
    position = (H_ORIGIN_TOPIC, H_ORIGIN_PARTITION, H_ORIGIN_OFFSET)
    if any(len(found.get(name, ())) != 1 for name in position):
        return []
    topic, partition, offset = (found[name][0] or b"" for name in position)
    try:
        if not topic or int(partition.decode("ascii")) < 0 or int(offset.decode("ascii")) < 0:
            return []
        topic.decode("utf-8")
    except (UnicodeDecodeError, ValueError):
        return []
    replay = found.get(H_REPLAY_ID, [])
    return [(name, found[name][0]) for name in position] + ([(H_REPLAY_ID, replay[0])] if len(replay) == 1 else [])


def _int(text: str | None) -> int:
    """A header's integer, or -1 when it is missing or not one (headers are anyone's to write)."""
    try:
        return int(text) if text is not None else -1
    except ValueError:
        return -1
