"""Dead-letter topics: which records to show, which to replay, where to, and which to refuse.

A dead letter's headers are written by whoever could write to the dead-letter topic, so nothing
here trusts them to choose a destination: a record is replayed to the source topic its
dead-letter topic belongs to (by the configured pairs: `metrics.dlq` → `metrics`), or to the
topic the operator names (`--to`), and only if its `eventsink.source.topic` header names that
same source topic. Everything else is refused, with the reason, and sent nowhere.

A dead letter marked `eventsink.stored: postgres` carries a truncated value; the original is in
PostgreSQL (`sinks.core.deadletters`) and is replayed from there, once its SHA-256 (and size)
match the headers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.deadletter import (
    H_ORIGINAL_SHA256,
    H_ORIGINAL_SIZE,
    H_STORED,
    HEADER_PREFIX,
    STORED_IN_POSTGRES,
    DeadLetterInfo,
)
from sinks.core.deadletters import StoredRecord
from streams.settings import Settings

Headers = tuple[tuple[str, bytes | None], ...]
# (consumer group, source topic, partition, offset) -> the original, or None if not stored there.
Loader = Callable[[str, str, int, int], StoredRecord | None]


def pairs(settings: Settings) -> dict[str, str]:
    """Each configured dead-letter topic and the source topic it belongs to."""
    from streams.kinds import all_kinds

    return {kind.dlq_topic: kind.topic for kind in all_kinds(settings)}


@dataclass(frozen=True, slots=True)
class Letter:
    """One record read from a dead-letter topic, and what its headers say (parsed totally)."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    info: DeadLetterInfo

    @classmethod
    def of(cls, record: Any) -> Letter:
        """From an aiokafka ConsumerRecord (or anything with its fields)."""
        headers = tuple((str(k), None if v is None else bytes(v)) for k, v in (record.headers or ()))
        return cls(
            record.partition,
            record.offset,
            int(record.timestamp or 0),
            record.key,
            record.value,
            headers,
            DeadLetterInfo.from_headers(headers),
        )

    @property
    def stored(self) -> bytes | None:
        """The `eventsink.stored` header: where the whole original is kept (None: in this record)."""
        return self.header(H_STORED)

    def header(self, name: str) -> bytes | None:
        values = [v for k, v in self.headers if k == name]
        return values[-1] if values else None

    def conflicting_headers(self) -> list[str]:
        """eventsink headers given more than once with different values (which one is true?)."""
        seen: dict[str, set[bytes | None]] = {}
        for k, v in self.headers:
            if k.startswith(HEADER_PREFIX):
                seen.setdefault(k, set()).add(v)
        return sorted(k for k, values in seen.items() if len(values) > 1)

    @property
    def original_headers(self) -> Headers:
        return tuple((k, v) for k, v in self.headers if not k.startswith(HEADER_PREFIX))


def select(letters: Iterable[Letter], reason: str | None, tenant: str | None, since: datetime | None) -> list[Letter]:
    """The letters matching every filter given (reason, tenant key, dead-lettered since)."""
    picked = []
    for letter in letters:
        if reason and letter.info.reason != reason:
            continue
        if tenant and (letter.key or b"").decode("utf-8", "replace").lower() != tenant.lower():
            continue
        if since and letter.timestamp_ms < since.timestamp() * 1000:
            continue
        picked.append(letter)
    return picked


@dataclass(frozen=True, slots=True)
class Replay:
    """What to publish: the original key, value and headers, to `topic`."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    letter: Letter


@dataclass(frozen=True, slots=True)
class Refusal:
    """A dead letter not replayed, and why."""

    letter: Letter
    why: str


@dataclass
class Plan:
    send: list[Replay]
    refused: list[Refusal]
    repeats: int  # letters for a source record already in `send` (dead-lettered more than once)


def _int_header(letter: Letter, name: str) -> int | None:
    raw = letter.header(name)
    try:
        return int(raw.decode("ascii")) if raw is not None else None
    except (UnicodeDecodeError, ValueError):
        return None


def _original(letter: Letter, load: Loader | None) -> StoredRecord | str:
    """The whole original of a letter whose value is in PostgreSQL, or why it cannot be had."""
    if letter.stored != STORED_IN_POSTGRES:
        return f"stored in {letter.stored!r}, a place eventsink does not know"
    if load is None:
        return "its original is in PostgreSQL, which was not read"
    info = letter.info
    stored = load(info.consumer_group, info.source_topic, info.source_partition, info.source_offset)
    if stored is None:
        return (
            f"its original ({info.consumer_group}, {info.source_topic}[{info.source_partition}]@"
            f"{info.source_offset}) is not in the database"
        )
    digest = hashlib.sha256(stored.value or b"").hexdigest()
    claimed = (letter.header(H_ORIGINAL_SHA256) or b"").decode("ascii", "replace").strip().lower()
    if claimed != digest:
        return "the stored original does not match the letter's SHA-256 header"
    size = _int_header(letter, H_ORIGINAL_SIZE)
    if size is not None and size != len(stored.value or b""):
        return "the stored original does not match the letter's size header"
    return stored


def plan(letters: Iterable[Letter], source: str | None, target: str, load: Loader | None = None) -> Plan:
    """Which letters go to `target`, which are refused, how many are repeats.

    `source` is the topic the dead-letter topic belongs to: a letter whose source header names
    another topic (or none) is refused. None (an unconfigured dead-letter topic replayed with
    `--to`) skips that check. `load` reads originals kept in PostgreSQL (needed only when a letter
    is marked stored). A source record dead-lettered more than once is replayed once.
    """
    send: list[Replay] = []
    refused: list[Refusal] = []
    seen: set[tuple[str, int, int]] = set()
    repeats = 0
    for letter in letters:
        info = letter.info
        conflicts = letter.conflicting_headers()
        if conflicts:
            refused.append(Refusal(letter, f"conflicting values for {', '.join(conflicts)}"))
            continue
        if source is not None and info.source_topic != source:
            named = repr(info.source_topic) if info.source_topic else "no topic"
            refused.append(Refusal(letter, f"its source header names {named}, not {source!r}"))
            continue
        if info.source_partition < 0 or info.source_offset < 0:
            refused.append(Refusal(letter, "no valid source partition and offset headers"))
            continue
        key, value, headers = letter.key, letter.value, letter.original_headers
        if letter.stored is not None:
            original = _original(letter, load)
            if isinstance(original, str):
                refused.append(Refusal(letter, original))
                continue
            key, value = original.key, original.value
            headers = tuple((k, v) for k, v in original.headers if not k.startswith(HEADER_PREFIX))
        identity = (info.source_topic, info.source_partition, info.source_offset)
        if identity in seen:
            repeats += 1
            continue
        seen.add(identity)
        send.append(Replay(target, key, value, headers, letter))
    return Plan(send, refused, repeats)
