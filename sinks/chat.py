"""Chat rows: sessions created by their first message, messages cascading with their session.

Session counters and token totals grow only by the messages this transaction inserted (the
RETURNING rows of the insert), so no replay or duplicate can inflate them. A message whose
conversation belongs to another tenant is refused (`tenant_mismatch`) before anything is
written: the other tenant's session is only ever read, under a row lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import psycopg

from schemas.chat import ChatEvent
from schemas.deadletter import Reason
from sinks.batch import Outcome, Record
from sinks.errors import TransientSinkError
from sinks.staging import restage_one, stage

STAGE = """
CREATE TEMP TABLE IF NOT EXISTS chat_stage (
    tenant_id         uuid,
    dedupe_id         text,
    conversation_id   uuid,
    role              text,
    content           text,
    model             text,
    user_id           text,
    prompt_tokens     integer,
    completion_tokens integer,
    occurred_at       timestamptz,
    kafka_offset      bigint
) ON COMMIT DELETE ROWS
"""
COPY_STAGE = """
COPY chat_stage (tenant_id, dedupe_id, conversation_id, role, content, model, user_id,
                 prompt_tokens, completion_tokens, occurred_at, kafka_offset)
FROM STDIN (FORMAT BINARY)
"""
STAGE_TYPES = ["uuid", "text", "uuid", "text", "text", "text", "text", "int4", "int4", "timestamptz", "int8"]
CLEAR_STAGE = "TRUNCATE chat_stage"

# The first message of a conversation (in offset order) claims it for its tenant.
CREATE_SESSIONS = """
INSERT INTO eventsink.chat_sessions (id, tenant_id, created_at, last_message_at)
SELECT DISTINCT ON (conversation_id) conversation_id, tenant_id, occurred_at, occurred_at
FROM chat_stage
WHERE conversation_id = ANY(%s)
ORDER BY conversation_id, kafka_offset
ON CONFLICT (id) DO NOTHING
"""
LOCK_SESSIONS = """
SELECT id, tenant_id FROM eventsink.chat_sessions
WHERE id = ANY(%s)
ORDER BY id
FOR UPDATE
"""
INSERT_MESSAGES = """
WITH inserted AS (
    INSERT INTO eventsink.chat_messages
        (tenant_id, dedupe_id, session_id, role, content, model, prompt_tokens, completion_tokens,
         occurred_at, kafka_topic, kafka_partition, kafka_offset)
    SELECT s.tenant_id, s.dedupe_id, s.conversation_id, s.role, s.content, s.model,
           s.prompt_tokens, s.completion_tokens, s.occurred_at, %(topic)s, %(partition)s, s.kafka_offset
    FROM chat_stage s
    JOIN eventsink.chat_sessions c ON c.id = s.conversation_id AND c.tenant_id = s.tenant_id
    ORDER BY s.tenant_id, s.dedupe_id, s.kafka_offset
    ON CONFLICT (tenant_id, dedupe_id) DO NOTHING
    RETURNING session_id, kafka_offset
), totals AS (
    SELECT i.session_id,
           count(*) AS messages,
           coalesce(sum(s.prompt_tokens), 0) AS prompt_tokens,
           coalesce(sum(s.completion_tokens), 0) AS completion_tokens,
           min(s.occurred_at) AS first_at,
           max(s.occurred_at) AS last_at,
           (array_agg(s.user_id ORDER BY s.occurred_at, s.kafka_offset)
                FILTER (WHERE s.user_id IS NOT NULL))[1] AS user_id
    FROM inserted i JOIN chat_stage s USING (kafka_offset)
    GROUP BY i.session_id
), counted AS (
    UPDATE eventsink.chat_sessions c
    SET message_count = c.message_count + t.messages,
        prompt_tokens = c.prompt_tokens + t.prompt_tokens,
        completion_tokens = c.completion_tokens + t.completion_tokens,
        created_at = least(c.created_at, t.first_at),
        last_message_at = greatest(c.last_message_at, t.last_at),
        user_id = coalesce(c.user_id, t.user_id)
    FROM totals t
    WHERE c.id = t.session_id
)
SELECT kafka_offset FROM inserted
"""

HISTORY = """
SELECT m.occurred_at, m.role, m.model, m.content, m.prompt_tokens, m.completion_tokens
FROM eventsink.chat_messages m
JOIN eventsink.chat_sessions s ON s.id = m.session_id
WHERE m.session_id = %(conversation)s AND s.tenant_id = %(tenant)s
ORDER BY m.occurred_at DESC, m.id DESC
LIMIT %(last)s
"""
SESSION = """
SELECT id, tenant_id, user_id, created_at, last_message_at, message_count, prompt_tokens, completion_tokens
FROM eventsink.chat_sessions WHERE id = %(conversation)s AND tenant_id = %(tenant)s
"""


def _row(record: Record[ChatEvent]) -> tuple:
    e = record.event
    return (
        e.tenant_id,
        e.dedupe_id,
        e.conversation_id,
        e.role,
        e.content,
        e.model,
        e.user_id,
        e.prompt_tokens,
        e.completion_tokens,
        e.occurred_at,
        record.offset,
    )


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


class ChatWriter:
    kind = "chat"
    stage_ddl: tuple[str, ...] = (STAGE,)

    async def upsert(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, records: Sequence[Record[ChatEvent]]
    ) -> Outcome:
        if not records:
            return Outcome()
        cur = await stage(conn, COPY_STAGE, STAGE_TYPES, map(_row, records))
        ids = sorted({r.event.conversation_id for r in records})
        owners = await claim_owners(conn, ids, CREATE_SESSIONS, LOCK_SESSIONS)
        rejected = mismatches(records, owners, "conversation_id")
        await cur.execute(INSERT_MESSAGES, {"topic": topic, "partition": partition})
        return Outcome(applied={int(r[0]) for r in await cur.fetchall()}, rejected=rejected)

    async def upsert_one(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, record: Record[ChatEvent]
    ) -> Outcome:
        return await restage_one(self, conn, CLEAR_STAGE, topic, partition, record)
