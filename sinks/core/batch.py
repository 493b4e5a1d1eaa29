"""What crosses from the stream side to a sink: one batch of one (topic, partition)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from schemas.deadletter import DeadLetter, Reason

E = TypeVar("E")


@dataclass(slots=True)
class Record(Generic[E]):
    """A valid event and where it came from; the raw bytes travel along for the DLQ."""

    offset: int
    event: E
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()

    def dead_letter(self, topic: str, partition: int, reason: Reason, detail: str) -> DeadLetter:
        return DeadLetter(reason, detail, topic, partition, self.offset, self.key, self.value, self.headers)


@dataclass(slots=True)
class Batch(Generic[E]):
    """Consecutive records of one partition, from `first_offset` to `last_offset` inclusive.

    Every offset of the range is accounted for exactly once: a valid record, a rejected one,
    or one the dedupe fast path already knows is in the database.
    """

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    records: list[Record[E]] = field(default_factory=list)
    rejected: list[DeadLetter] = field(default_factory=list)
    known_duplicates: list[int] = field(default_factory=list)
    # Set once the broker confirmed that nothing exists between the ledger and first_offset
    # (compacted topics, transaction markers).
    gap_verified: bool = False

    def __len__(self) -> int:
        return len(self.records) + len(self.rejected) + len(self.known_duplicates)


@dataclass(slots=True)
class Outcome:
    """What a kind's upsert did with the records handed to it."""

    applied: set[int] = field(default_factory=set)
    rejected: dict[int, tuple[Reason, str]] = field(default_factory=dict)
    # Applied records that changed nothing because the row had moved past them (analysis).
    superseded: set[int] = field(default_factory=set)


@dataclass(slots=True)
class WriteResult(Generic[E]):
    topic: str
    partition: int
    ledger_before: int
    ledger_after: int
    replayed: int = 0
    applied: list[Record[E]] = field(default_factory=list)
    duplicates: list[Record[E]] = field(default_factory=list)
    known_duplicates: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    superseded: int = 0

    @property
    def events(self) -> int:
        return len(self.applied) + len(self.duplicates) + self.known_duplicates + len(self.dead_letters)

    @property
    def in_database(self) -> list[Record[E]]:
        """Records whose key is now in the database: safe to remember as seen."""
        return self.applied + self.duplicates
