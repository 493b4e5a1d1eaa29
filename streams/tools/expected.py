"""The one expected-state computation: from a topic's records (and its dead-letter topic's), what
the database must hold once the workers applied all of them.

`expect(kind, records, dead)` decodes every record with the kind's model and decode context,
exactly as a worker does, and answers:

- `events`: the valid records by idempotency key (tenant_id, dedupe_id), each key's records in
  (partition, offset) order; `invalid`: the records decoding refuses (they are dead letters);
- `owners` (chat, analysis): the tenant owning each conversation / analysis, the tenant of its
  first valid record (offset order within a partition; across partitions, the earlier record
  timestamp); `refused`: the valid records that must be dead letters anyway, the other tenants'
  records (`tenant_mismatch`) and those the DLQ says the database refused (`db_rejected`, which
  no one can predict from the topic);
- `accepted`: per key, the record whose row the database holds (the first one not refused);
- `sessions()`: per conversation, its owner, message count and token totals (from the first
  accepted record of each key); `analyses()`: per analysis, its owner and the row
  (`sinks.writers.lifecycle.fold` of its accepted events); `superseded()`: the analysis events
  older than the state they meet in delivery order (offset order within a partition);
- `ledger()`: the counters a complete run shows for the topic (events, rows_applied,
  duplicates, dead_letters, superseded);
- `target()`: all of that in a compact, picklable form, for callers that keep it while the
  records themselves can go.

Records are anything with partition, offset, timestamp (ms), key, value and headers: aiokafka's
ConsumerRecord, what `streams.tools.reader.Reader` returns.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, Protocol
from uuid import UUID

from schemas.codec import Decoded
from schemas.codec import key_tenant as decoded_key_tenant
from schemas.deadletter import DeadLetterInfo, Reason
from sinks.writers.lifecycle import State, fold, step_of, superseded
from streams.kinds import Kind
from streams.tools.reader import FROM_BEGINNING, Reader, Start

Key = tuple[UUID, str]  # (tenant_id, dedupe_id)
Where = tuple[int, int]  # (partition, offset)
NOT_A_TENANT = "(not a tenant)"  # the tenant of an invalid record whose key is not a tenant_id
# What a reader reports as it goes: (topic, records of it just read).
Progress = Callable[[str, int], None]

# The event field naming the row a tenant owns, per kind that has one.
OWNED_BY = {"chat": "conversation_id", "analysis": "analysis_id"}


class SourceRecord(Protocol):
    """One Kafka record, as the reader hands it out."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes | None]] | None: ...


@dataclass(frozen=True, slots=True)
class Placed:
    """Where a record is in its topic: what `Seen` and `Invalid` start with."""

    partition: int
    offset: int

    @property
    def where(self) -> Where:
        return self.partition, self.offset


@dataclass(frozen=True, slots=True)
class Seen(Placed):
    """A valid record: where it is and its decoded event (the kind's model)."""

    timestamp: int  # ms since the epoch, the record's
    event: Any


@dataclass(frozen=True, slots=True)
class Invalid(Placed):
    """A record decoding refuses, with the tenant its key names (NOT_A_TENANT if none)."""

    tenant: str
    reason: str


@dataclass(frozen=True, slots=True)
class Session:
    """A chat_sessions row: its owner and counters."""

    tenant_id: UUID
    messages: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Analysis:
    """An analysis_requests row: its owner and the fold of its events."""

    tenant_id: UUID
    state: State


@dataclass(frozen=True, slots=True)
class Counters:
    """The offsets ledger's counters of one topic, summed over its partitions."""

    events: int = 0
    rows_applied: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    superseded: int = 0


@dataclass(frozen=True)
class Target:
    """What the database must hold for one topic once every record is applied."""

    topic: str
    rows_per_tenant: dict[str, int]  # tenant_id (text) -> rows of the kind's key table
    sessions: dict[UUID, Session]  # chat only
    analyses: dict[UUID, Analysis]  # analysis only
    ledger: Counters


@dataclass
class Expected:
    """A topic's records, read once, and what the database must hold for them (see the module)."""

    kind: str
    topic: str
    records: int = 0
    events: dict[Key, list[Seen]] = field(default_factory=dict)
    invalid: list[Invalid] = field(default_factory=list)
    owners: dict[UUID, UUID] = field(default_factory=dict)
    refused: dict[Where, str] = field(default_factory=dict)  # valid records that are dead letters -> reason
    dead_lettered: Counter[Where] = field(default_factory=Counter)  # DLQ copies per source record

    @cached_property
    def accepted(self) -> dict[Key, Seen]:
        """Per key with a row, the record the row comes from: its first one not refused."""
        out = {}
        for key, seen in self.events.items():
            first = next((s for s in seen if s.where not in self.refused), None)
            if first is not None:
                out[key] = first
        return out

    def rows_per_tenant(self) -> Counter[str]:
        return Counter(str(tenant) for tenant, _ in self.accepted)

    def _firsts(self, keys: Iterable[Key] | None) -> list[Seen]:
        """The accepted records of `keys` (every accepted key when None). A key given that has no
        accepted record (found stored anyway) counts with its first record."""
        if keys is None:
            return list(self.accepted.values())
        return [self.accepted.get(k) or self.events[k][0] for k in keys if k in self.events]

    def sessions(self, keys: Iterable[Key] | None = None) -> dict[UUID, Session]:
        """Chat: per conversation, the session its accepted messages (or those of `keys`) make."""
        totals: dict[UUID, list[int]] = defaultdict(lambda: [0, 0, 0])
        tenants: dict[UUID, UUID] = {}
        for s in self._firsts(keys):
            e = s.event
            t = totals[e.conversation_id]
            t[0] += 1
            t[1] += e.prompt_tokens or 0
            t[2] += e.completion_tokens or 0
            tenants[e.conversation_id] = self.owners.get(e.conversation_id, e.tenant_id)
        return {cid: Session(tenants[cid], *t) for cid, t in totals.items()}

    def analyses(self, keys: Iterable[Key] | None = None) -> dict[UUID, Analysis]:
        """Analysis: per analysis, the row its accepted events (or those of `keys`) fold into."""
        steps: dict[UUID, list[Any]] = defaultdict(list)
        tenants: dict[UUID, UUID] = {}
        for s in self._firsts(keys):
            steps[s.event.analysis_id].append(step_of(s.event))
            tenants[s.event.analysis_id] = self.owners.get(s.event.analysis_id, s.event.tenant_id)
        return {aid: Analysis(tenants[aid], fold(history)) for aid, history in steps.items()}

    def superseded(self) -> int:
        """Analysis: accepted events older than their row's state when they arrive, in offset order."""
        if self.kind != "analysis":
            return 0
        arriving: dict[UUID, list[Seen]] = defaultdict(list)
        for s in self.accepted.values():
            arriving[s.event.analysis_id].append(s)
        return sum(
            len(superseded([], [step_of(s.event) for s in sorted(seen, key=lambda s: s.where)]))
            for seen in arriving.values()
        )

    def ledger(self) -> Counters:
        valid = sum(len(seen) for seen in self.events.values())
        kept = valid - len(self.refused)
        return Counters(
            events=self.records,
            rows_applied=len(self.accepted),
            duplicates=kept - len(self.accepted),
            dead_letters=len(self.invalid) + len(self.refused),
            superseded=self.superseded(),
        )

    def target(self) -> Target:
        return Target(
            self.topic,
            dict(self.rows_per_tenant()),
            self.sessions() if self.kind == "chat" else {},
            self.analyses() if self.kind == "analysis" else {},
            self.ledger(),
        )


def expect(
    kind: Kind, records: Iterable[SourceRecord], dead: Iterable[SourceRecord] = (), group: str | None = None
) -> Expected:
    """What the database must hold for `records` of `kind.topic`; `dead` are the records of its
    dead-letter topic (those of other source topics are ignored, and, given a `group`, those
    another consumer group's workers published: two groups reading one topic each dead-letter
    its invalid records, which is no letter published twice)."""
    out = Expected(kind.name, kind.topic)
    db_rejected: set[Where] = set()
    for r in dead:
        info = DeadLetterInfo.from_headers(list(r.headers or ()))
        if group is not None and info.consumer_group and info.consumer_group != group:
            continue
        if info.source_topic == kind.topic:
            out.dead_lettered[(info.source_partition, info.source_offset)] += 1
            if info.reason == Reason.DB_REJECTED:
                db_rejected.add((info.source_partition, info.source_offset))
    for r in records:
        out.records += 1
        result = kind.decode(r.value, kind.model, r.key, kind.context)
        if isinstance(result, Decoded):
            e = result.event
            out.events.setdefault((e.tenant_id, e.dedupe_id), []).append(  # type: ignore[attr-defined]
                Seen(r.partition, r.offset, r.timestamp, e)
            )
        else:
            out.invalid.append(Invalid(r.partition, r.offset, key_tenant(r.key), result.reason.value))
    for seen in out.events.values():
        seen.sort(key=lambda s: s.where)
    valid = [s for seen in out.events.values() for s in seen]
    out.refused = {s.where: Reason.DB_REJECTED.value for s in valid if s.where in db_rejected}
    owned_by = OWNED_BY.get(kind.name)
    if owned_by:
        out.owners = _owners([s for s in valid if s.where not in db_rejected], owned_by, out.refused)
    return out


def _owners(valid: list[Seen], owned_by: str, refused: dict[Where, str]) -> dict[UUID, UUID]:
    """Row id -> the tenant of its first record that inserts an event, judged as the sink does
    (`sinks.writers.owners`): in offset order within a partition, across partitions by
    timestamp (the partition breaking ties). A record naming a row another tenant owns by then is
    refused (added to `refused`); a re-send of a key stored already claims nothing."""
    partitions: dict[int, list[Seen]] = defaultdict(list)
    for s in valid:
        partitions[s.partition].append(s)
    streams = [sorted(seen, key=lambda s: s.offset) for seen in partitions.values()]
    owners: dict[UUID, UUID] = {}
    stored: set[Key] = set()
    for s in heapq.merge(*streams, key=lambda s: (s.timestamp, s.partition)):
        row, tenant = getattr(s.event, owned_by), s.event.tenant_id
        owner = owners.get(row)
        if owner is not None and owner != tenant:
            refused[s.where] = Reason.TENANT_MISMATCH.value
            continue
        key = (tenant, s.event.dedupe_id)
        if key in stored:
            continue
        stored.add(key)
        owners.setdefault(row, tenant)
    return owners


def key_tenant(key: bytes | None) -> str:
    """The tenant_id a record key names, as text, or NOT_A_TENANT (the decoder's own rule)."""
    tenant = decoded_key_tenant(key)
    return NOT_A_TENANT if tenant is None else str(tenant)


async def read_expected(
    reader: Reader,
    kind: Kind,
    since: datetime | None = None,
    progress: Progress | None = None,
    group: str | None = None,
) -> Expected:
    """Read `kind.topic` (all of it, or since a time) and its DLQ (all of it; none if missing).
    `progress(topic, n)`: n more records of `topic` read.

    Raises LookupError when the topic itself does not exist.
    """
    start = Start(since=since, last=None) if since else FROM_BEGINNING

    def counting(topic: str) -> Callable[[int], None] | None:
        return None if progress is None else (lambda n: progress(topic, n))

    records = await reader.read_all(kind.topic, start=start, on_records=counting(kind.topic))
    if since is not None:
        # The records' own timestamps decide, as `tail` does: a broker's answer to "the offset
        # for this time" may be wrong (Tansu answers offset 0 for a time after its last record).
        since_ms = since.timestamp() * 1000
        records = [r for r in records if r.timestamp >= since_ms]
    try:
        dead = await reader.read_all(kind.dlq_topic, on_records=counting(kind.dlq_topic))
    except LookupError:
        dead = []
    return expect(kind, records, dead, group)
