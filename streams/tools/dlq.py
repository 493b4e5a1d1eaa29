"""Dead-letter topics: which records to show, which to replay, where to, and which to refuse.

A dead letter's headers are written by whoever could write to the dead-letter topic, so nothing
here trusts them to choose a destination: a record is replayed to the source topic its
dead-letter topic belongs to (by the configured pairs: `metrics.dlq` → `metrics`), or to the
topic the operator names (`--to`), and only if its `eventsink.source.topic` header names that
same source topic. Everything else is refused, with the reason, and sent nowhere.

A dead letter marked `eventsink.stored: postgres` carries a truncated value; the original is in
PostgreSQL (`sinks.core.deadletters`) and is replayed from there, once its SHA-256 (and size)
match the headers.

A replayed record carries its lineage (`eventsink.origin.*`: where it first failed, and
`eventsink.replay.id`); if it fails again, its dead letter names that origin, so every letter of
one original record is one dead letter (`Letter.identity`): listed once, replayed once. Replaying
records that still fail therefore adds one letter per dead letter and replay, never new dead
letters. Each replay is recorded on `<dlq topic>.replays` (`ReplayRecord`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.codec import key_tenant
from schemas.deadletter import (
    H_ORIGIN_OFFSET,
    H_ORIGIN_PARTITION,
    H_ORIGIN_TOPIC,
    H_ORIGINAL_SHA256,
    H_ORIGINAL_SIZE,
    H_REPLAY_ID,
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

    @property
    def identity(self) -> tuple[str, int, int, bytes]:
        """Which dead letter this record is a letter of: the position where the original record
        first failed, and a digest of its bytes. Every failure of one record (a worker that died
        before its commit, a replay that failed again) has the same identity. The bytes are part
        of it because a lineage header is anyone's to write: a forged one never makes another
        record's letter look like a repeat."""
        content = hashlib.sha256()
        for part in (self.key, self.header(H_ORIGINAL_SHA256) if self.stored is not None else self.value):
            content.update(b"-" if part is None else b"+%d:" % len(part) + part)
        return (*self.info.origin, content.digest())

    @property
    def failed_at(self) -> str:
        """When it failed, in UTC with the zone (ISO 8601, `Z`); the header as it is if unreadable."""
        return utc_text(self.info.failed_at)


def utc_text(text: str) -> str:
    """An RFC 3339 time shown in UTC with its zone; text without a zone or unreadable, as it is."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return text
    if at.tzinfo is None:
        return text
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class DeadLetterGroup:
    """One dead letter: every letter of one original record (oldest first)."""

    letters: list[Letter]

    @property
    def latest(self) -> Letter:
        return self.letters[-1]

    @property
    def attempts(self) -> int:
        return len(self.letters)


def dead_letters(letters: Iterable[Letter]) -> list[DeadLetterGroup]:
    """The letters grouped by identity, each group in the topic's order (by time, then position),
    the groups ordered by their latest letter."""
    groups: dict[tuple[str, int, int, bytes], DeadLetterGroup] = {}
    for letter in sorted(letters, key=lambda x: (x.timestamp_ms, x.partition, x.offset)):
        groups.setdefault(letter.identity, DeadLetterGroup([])).letters.append(letter)
    return sorted(groups.values(), key=lambda g: (g.latest.timestamp_ms, g.latest.partition, g.latest.offset))


def is_dead_letter_topic(letters: Iterable[Letter]) -> bool:
    """Whether every record read carries a reason: a source topic's records carry none."""
    return all(letter.header("eventsink.reason") is not None for letter in letters)


def select(letters: Iterable[Letter], reason: str | None, tenant: str | None, since: datetime | None) -> list[Letter]:
    """The letters matching every filter given (reason, tenant key, dead-lettered since)."""
    picked = []
    for letter in letters:
        if reason and letter.info.reason != reason:
            continue
        if tenant and str(key_tenant(letter.key)) != tenant:  # `tenant` canonical: any key spelling matches
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

    def lineage(self, replay_id: str) -> Headers:
        """The original headers, then where the record first failed and which replay sent it."""
        topic, partition, offset = self.letter.info.origin
        return (
            *self.headers,
            (H_ORIGIN_TOPIC, topic.encode()),
            (H_ORIGIN_PARTITION, str(partition).encode()),
            (H_ORIGIN_OFFSET, str(offset).encode()),
            (H_REPLAY_ID, replay_id.encode()),
        )


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
    another topic (or none) is refused, and so is one that first failed on another topic (its
    origin: a record of another kind replayed into `source`, which can never be applied there).
    None (an unconfigured dead-letter topic replayed with `--to`) skips those checks. `load`
    reads originals kept in PostgreSQL (needed only when a letter is marked stored). A record
    dead-lettered more than once (same `Letter.identity`: a worker that died before its commit,
    a replay that failed again) is replayed once.
    """
    send: list[Replay] = []
    refused: list[Refusal] = []
    seen: set[tuple[str, int, int, bytes]] = set()
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
        if source is not None and info.origin_topic != source:
            refused.append(
                Refusal(letter, f"it first failed on {info.origin_topic!r}, not {source!r}: replay it from there")
            )
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
        identity = letter.identity
        if identity in seen:
            repeats += 1
            continue
        seen.add(identity)
        send.append(Replay(target, key, value, headers, letter))
    return Plan(send, refused, repeats)


def log_topic(dlq_topic: str) -> str:
    """Where the replays of a dead-letter topic are recorded."""
    return f"{dlq_topic}.replays"


@dataclass(frozen=True)
class ReplayRecord:
    """What one `eventsink dlq replay` did: one JSON record on `log_topic(dlq)`, keyed by its id.

    `origins` lists each dead letter sent (topic, partition, offset of its first failure); the
    records sent carry the same id in `eventsink.replay.id`.

    A replay records itself twice under its id: `status` "started" before it sends anything
    (`planned` records, `origins` those it is about to send), then "done", "interrupted" (Ctrl-C)
    or "failed" (the broker's error in `error`) with `sent`, the records the broker acknowledged,
    and `unconfirmed`, those handed to the client whose acknowledgement never came (each may or may
    not be on the topic). A replay whose last record is "started" was killed before it could say
    how far it got: up to `planned` records may have been sent. Records written before these
    fields existed read as "done".
    """

    id: str
    at: str
    dlq_topic: str
    to: str
    filters: dict[str, str | None]
    sent: int
    repeats: int
    refused: int
    user: str
    host: str
    origins: list[tuple[str, int, int]] = field(default_factory=list)
    status: str = "done"
    planned: int = 0
    unconfirmed: int = 0
    error: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | None) -> ReplayRecord | None:
        """A recorded replay, or None for a record that is not one (the topic is anyone's to write)."""
        try:
            data = orjson.loads(raw or b"")
            data["origins"] = [tuple(o) for o in data.get("origins", [])]
            return cls(**data)
        except (orjson.JSONDecodeError, TypeError, AttributeError, KeyError):
            return None


def latest(records: Iterable[ReplayRecord]) -> list[ReplayRecord]:
    """Each replay once, as its last record says (the log's order), in the order replays began;
    the origins from its start's record where the end's carries none (it is kept small)."""
    last: dict[str, ReplayRecord] = {}
    for r in records:
        before = last.get(r.id)
        if before is not None and not r.origins and before.origins:
            r = replace(r, origins=before.origins)
        last[r.id] = r  # a dict keeps the first insertion's place
    return list(last.values())


def new_replay_id(now: datetime | None = None) -> str:
    """Sortable by time, unique: `20240501T120000Z-1a2b3c4d`."""
    import secrets

    at = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{at:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
