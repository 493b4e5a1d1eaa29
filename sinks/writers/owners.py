"""Who owns a chat session or an analysis: the tenant of the first event that created it.

Both writers claim their rows the same way, so a tenant can never write into another tenant's
conversation or analysis: an event naming a row owned by another tenant is refused
(`tenant_mismatch`) and the other tenant's row is only read, under a row lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import psycopg

from schemas.deadletter import Reason
from sinks.core.batch import Record
from sinks.errors import TransientSinkError


async def claim_owners(conn: psycopg.AsyncConnection, ids: list[UUID], create: str, lock: str) -> dict[UUID, UUID]:
    """Create the rows that do not exist (first claimer wins), lock all, return their tenants.

    Locks are taken in id order, so concurrent transactions cannot deadlock. A row deleted by
    retention between the insert and the lock is created again.
    """
    owners: dict[UUID, UUID] = {}
    missing = ids
    for _ in range(3):
        await conn.execute(create, (missing,))
        cur = await conn.execute(lock, (ids,))
        owners = {row[0]: row[1] for row in await cur.fetchall()}
        missing = [i for i in ids if i not in owners]
        if not missing:
            return owners
    raise TransientSinkError(f"rows {missing[:3]} kept disappearing while being claimed")


def mismatches(records: Sequence[Record], owners: dict[UUID, UUID], key: str) -> dict[int, tuple[Reason, str]]:
    rejected = {}
    for r in records:
        if owners[getattr(r.event, key)] != r.event.tenant_id:
            rejected[r.offset] = (
                Reason.TENANT_MISMATCH,
                f"{key} {getattr(r.event, key)} belongs to another tenant",
            )
    return rejected
