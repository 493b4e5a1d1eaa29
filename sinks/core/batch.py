"""What crosses from the stream side to a sink: one batch of one (topic, partition)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar
from uuid import UUID

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
class Cached(Generic[E]):
    """A record the dedupe cache believes is a duplicate: its key was committed by the batch that
    ended at `committed_at`. The sink trusts that only if the ledger, read in the batch's own
    transaction, is at or past `committed_at`; otherwise the record is applied like any other."""

    record: Record[E]
    committed_at: int


@dataclass(frozen=True, slots=True)
class LogIdentity:
    """Which log the records come from: Kafka's topic id (None where the broker reports none) and
    the cluster id (None where unknown)."""

    topic_id: UUID | None = None
    cluster_id: str | None = None


@dataclass(frozen=True, slots=True)
class Hole:
    """The stream side's claim that the broker's log has no record after `after` and before
    `before` (transaction markers, compaction, aborted records). The sink accepts it only where
    it meets the ledger or the batch's own records exactly."""

    after: int
    before: int


@dataclass(frozen=True, slots=True)
class LostRange:
    """The stream side's claim that offsets `first..last` were due but the broker deleted them
    (retention): it reported `log_start` as the partition's first offset. The sink accepts it
    only if it starts right after the ledger and ends right before that log start."""

    first: int
    last: int
    log_start: int


@dataclass(slots=True)
class Batch(Generic[E]):
    """Consecutive records of one partition, from `first_offset` to `last_offset` inclusive.

    Every record of the range is accounted for exactly once: a valid record, a rejected one, or
    a cached duplicate. Every offset without a record, before the batch (after the ledger) or
    inside it, is named by one of `holes` (or, after the ledger, by `lost`): the sink refuses a
    batch whose offsets jump where no claim says why.
    """

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    records: list[Record[E]] = field(default_factory=list)
    rejected: list[DeadLetter] = field(default_factory=list)
    cached: list[Cached[E]] = field(default_factory=list)
    # Holes the broker confirmed, each between two offsets: before the first record (after the
    # ledger, or after `lost`) and between records of the batch.
    holes: tuple[Hole, ...] = ()
    # Offsets after the ledger that were due but the broker no longer has (retention deleted
    # them first): recorded as lost in the same transaction.
    lost: LostRange | None = None
    identity: LogIdentity = field(default_factory=LogIdentity)

    def __len__(self) -> int:
        return len(self.records) + len(self.rejected) + len(self.cached)


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
    # Records at or below the ledger: an earlier transaction applied them.
    redelivered: int = 0
    applied: list[Record[E]] = field(default_factory=list)
    # Duplicates the database found (ON CONFLICT), and the ones the dedupe cache did.
    duplicates: list[Record[E]] = field(default_factory=list)
    cached_duplicates: int = 0
    # Cached duplicates the ledger did not confirm (the database went back in time): applied.
    cache_misses: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    superseded: int = 0
    lost: int = 0

    @property
    def events(self) -> int:
        return len(self.applied) + len(self.duplicates) + self.cached_duplicates + len(self.dead_letters)

    @property
    def in_database(self) -> list[Record[E]]:
        """Records whose key is now in the database: safe to remember as seen."""
        return self.applied + self.duplicates
