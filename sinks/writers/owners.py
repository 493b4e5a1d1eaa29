"""Who owns a chat session or an analysis: the tenant of the first event that created it.

Both writers claim their rows the same way, so that a tenant never writes into another tenant's
conversation or analysis, no row exists that no event created, and retention and writers never
interleave on the same row:

1. every id the batch names is claimed with a transaction-level advisory lock, all at once and in
   key order, before anything else: writers naming the same ids queue in one order, so they
   cannot deadlock (nor with themselves when a batch is redone record by record: `prepare`);
2. the rows that exist are then locked (`FOR UPDATE`, in id order); retention skips locked rows
   (`SKIP LOCKED`) and takes no advisory lock, and a writer that finds a row retention holds waits
   for it, then sees it gone;
3. the records are then judged in offset order, exactly as if each came in a batch of its own: a
   record naming a row of another tenant is refused (`tenant_mismatch`); a record re-sent (its
   (tenant_id, dedupe_id) stored already, or inserted by an earlier record of the batch) is a
   duplicate and claims nothing; any other record naming a missing row claims it for its tenant.
   The writer creates the row only from the events it actually inserted (the same statement),
   never ahead of them. So what a record becomes never depends on how records were batched.

The other tenant's row is only read, under its lock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

import psycopg

from schemas.deadletter import Reason
from sinks.core.batch import Record

ADVISORY_LOCKS = """
SELECT pg_advisory_xact_lock(%s, k) FROM (SELECT DISTINCT unnest(%s::int4[]) AS k ORDER BY k) AS keys
"""


@dataclass(frozen=True)
class Owned:
    """The rows of one kind that tenants own: their table, the event field naming a row, and the
    advisory lock namespace of their ids (the first key of pg_advisory_xact_lock(int4, int4))."""

    table: str
    key: str
    namespace: int
    # The table of the events that name the rows, unique per (tenant_id, dedupe_id).
    events: str

    @property
    def lock_rows(self) -> str:
        """`(id, tenant_id)` of the existing rows a batch names, locked in id order."""
        return f"SELECT id, tenant_id FROM {self.table}\nWHERE id = ANY(%s)\nORDER BY id\nFOR UPDATE"

    @property
    def stored_keys(self) -> str:
        """The (tenant_id, dedupe_id) pairs given that name an event stored already."""
        return (
            f"SELECT e.tenant_id, e.dedupe_id FROM {self.events} e\n"
            "JOIN unnest(%s::uuid[], %s::text[]) AS k(tenant_id, dedupe_id) USING (tenant_id, dedupe_id)"
        )


CHAT_SESSIONS = Owned("eventsink.chat_sessions", "conversation_id", 0x6368, "eventsink.chat_messages")  # "ch"
ANALYSES = Owned("eventsink.analysis_requests", "analysis_id", 0x616E, "eventsink.analysis_events")  # "an"


@dataclass(slots=True)
class Claims:
    """Owners of the ids a batch names: the tenants of existing rows (now locked), and the ids
    this transaction may create, with the tenant that claims each."""

    existing: dict[UUID, UUID] = field(default_factory=dict)
    new: dict[UUID, UUID] = field(default_factory=dict)
    # Ids without a row that must not get one (archived analyses).
    excluded: set[UUID] = field(default_factory=set)
    # Records naming a row of another tenant, as dead letters' (reason, detail) by offset.
    refused: dict[int, tuple[Reason, str]] = field(default_factory=dict)

    @property
    def owners(self) -> dict[UUID, UUID]:
        return {**self.existing, **self.new}

    def pairs(self) -> tuple[list[UUID], list[UUID]]:
        """(ids, tenants) of every row the batch may write into, for `unnest` in a statement."""
        owners = self.owners
        ids = sorted(owners)
        return ids, [owners[i] for i in ids]


def _lock_key(row_id: UUID) -> int:
    # 32 bits of the id: a collision only makes two unrelated claims wait for each other.
    return int.from_bytes(row_id.bytes[:4], "big", signed=True)


async def lock_ids(conn: psycopg.AsyncConnection, records: Sequence[Record], owned: Owned) -> None:
    """Take the advisory locks of every id the records name, in key order (re-taking one this
    transaction holds returns at once)."""
    ids = {getattr(r.event, owned.key) for r in records}
    await conn.execute(ADVISORY_LOCKS, (owned.namespace, [_lock_key(i) for i in ids]))


async def claim(
    conn: psycopg.AsyncConnection,
    records: Sequence[Record],
    owned: Owned,
    *,
    not_creatable: Callable[[list[UUID]], Awaitable[set[UUID]]] | None = None,
) -> Claims:
    """Lock the ids and rows the records name (by their `owned.key` attribute); decide who owns
    each, and which records are refused for naming another tenant's row.

    `not_creatable`, when given, is asked (under the locks) which missing ids must not be
    created; they are left out of the owners and listed in `excluded`, and the records naming
    them are left to the writer.
    """
    await lock_ids(conn, records, owned)
    ids = sorted({getattr(r.event, owned.key) for r in records})
    claims = Claims()
    cur = await conn.execute(owned.lock_rows, (ids,))
    claims.existing = {row[0]: row[1] for row in await cur.fetchall()}
    missing = [i for i in ids if i not in claims.existing]
    if missing and not_creatable is not None:
        claims.excluded = await not_creatable(missing)
    # Only a record naming a row that may be created can claim: whether it is a re-send of an
    # event stored already is asked for those records alone (none when every row exists).
    creatable = set(missing) - claims.excluded
    claimants = [r for r in records if getattr(r.event, owned.key) in creatable]
    inserted = await _stored(conn, claimants, owned) if claimants else set()
    owners = dict(claims.existing)
    for r in sorted(records, key=lambda r: r.offset):
        row_id, tenant = getattr(r.event, owned.key), r.event.tenant_id
        if row_id in claims.excluded:
            continue
        owner = owners.get(row_id)
        if owner is not None and owner != tenant:
            claims.refused[r.offset] = (Reason.TENANT_MISMATCH, f"{owned.key} {row_id} belongs to another tenant")
            continue
        key = (tenant, r.event.dedupe_id)
        if key in inserted:
            continue  # a duplicate: inserts nothing, so claims nothing
        inserted.add(key)
        if owner is None:
            owners[row_id] = claims.new[row_id] = tenant
    return claims


async def _stored(conn: psycopg.AsyncConnection, records: Sequence[Record], owned: Owned) -> set[tuple[UUID, str]]:
    keys = {(r.event.tenant_id, r.event.dedupe_id) for r in records}
    tenants, dedupe_ids = [k[0] for k in keys], [k[1] for k in keys]
    cur = await conn.execute(owned.stored_keys, (tenants, dedupe_ids))
    return {(row[0], row[1]) for row in await cur.fetchall()}
