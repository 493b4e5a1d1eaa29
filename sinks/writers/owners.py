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
3. what is missing belongs to the tenant of the batch's first record naming it (by offset),
   and the writer creates the row only from the events it actually inserted (the same statement),
   never ahead of them: a duplicate re-sent under another id creates nothing.

An event naming a row owned by another tenant is refused (`tenant_mismatch`); the other
tenant's row is only read, under its lock.
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

    @property
    def lock_rows(self) -> str:
        """`(id, tenant_id)` of the existing rows a batch names, locked in id order."""
        return f"SELECT id, tenant_id FROM {self.table}\nWHERE id = ANY(%s)\nORDER BY id\nFOR UPDATE"


CHAT_SESSIONS = Owned("eventsink.chat_sessions", "conversation_id", 0x6368)  # "ch"
ANALYSES = Owned("eventsink.analysis_requests", "analysis_id", 0x616E)  # "an"


@dataclass(slots=True)
class Claims:
    """Owners of the ids a batch names: the tenants of existing rows (now locked), and the ids
    this transaction may create, with the tenant that claims each."""

    existing: dict[UUID, UUID] = field(default_factory=dict)
    new: dict[UUID, UUID] = field(default_factory=dict)
    # Ids without a row that must not get one (archived analyses).
    excluded: set[UUID] = field(default_factory=set)

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
    """Lock the ids and rows the records name (by their `owned.key` attribute); decide who owns each.

    `not_creatable`, when given, is asked (under the locks) which missing ids must not be
    created; they are left out of the owners and listed in `excluded`.
    """
    await lock_ids(conn, records, owned)
    ids = sorted({getattr(r.event, owned.key) for r in records})
    claims = Claims()
    cur = await conn.execute(owned.lock_rows, (ids,))
    claims.existing = {row[0]: row[1] for row in await cur.fetchall()}
    missing = [i for i in ids if i not in claims.existing]
    if missing:
        if not_creatable is not None:
            claims.excluded = await not_creatable(missing)
        first_claimer: dict[UUID, UUID] = {}
        for r in sorted(records, key=lambda r: r.offset):
            row_id = getattr(r.event, owned.key)
            if row_id not in claims.existing and row_id not in first_claimer:
                first_claimer[row_id] = r.event.tenant_id
        claims.new = {i: tenant for i, tenant in first_claimer.items() if i not in claims.excluded}
    return claims


def mismatches(records: Sequence[Record], owners: dict[UUID, UUID], owned: Owned) -> dict[int, tuple[Reason, str]]:
    """Records naming a row of another tenant, as dead letters' (reason, detail) by offset."""
    rejected = {}
    for r in records:
        row_id = getattr(r.event, owned.key)
        owner = owners.get(row_id)
        if owner is not None and owner != r.event.tenant_id:
            rejected[r.offset] = (Reason.TENANT_MISMATCH, f"{owned.key} {row_id} belongs to another tenant")
    return rejected
