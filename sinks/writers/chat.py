"""Chat rows: sessions created by their first message, messages cascading with their session.

Session counters and token totals grow only by the messages this transaction inserted (the
RETURNING rows of the insert), so no replay or duplicate can inflate them. A message whose
conversation belongs to another tenant is refused (`tenant_mismatch`) before anything is
written: the other tenant's session is only ever read, under a row lock.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from schemas.chat import ChatEvent
from sinks.core.batch import Outcome, Record
from sinks.writers.owners import claim_owners, mismatches
from sinks.writers.staging import Staging, restage_one

STAGING = Staging.of(ChatEvent, "chat_stage")

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
         occurred_at, schema_version, attributes, kafka_topic, kafka_partition, kafka_offset)
    SELECT s.tenant_id, s.dedupe_id, s.conversation_id, s.role, s.content, s.model,
           s.prompt_tokens, s.completion_tokens, s.occurred_at, s.schema_version, s.attributes,
           %(topic)s, %(partition)s, s.kafka_offset
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


class ChatWriter:
    kind = "chat"
    stage_ddl: tuple[str, ...] = (STAGING.ddl,)

    async def upsert(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, records: Sequence[Record[ChatEvent]]
    ) -> Outcome:
        if not records:
            return Outcome()
        cur = await STAGING.stage(conn, records)
        ids = sorted({r.event.conversation_id for r in records})
        owners = await claim_owners(conn, ids, CREATE_SESSIONS, LOCK_SESSIONS)
        rejected = mismatches(records, owners, "conversation_id")
        await cur.execute(INSERT_MESSAGES, {"topic": topic, "partition": partition})
        return Outcome(applied={int(r[0]) for r in await cur.fetchall()}, rejected=rejected)

    async def upsert_one(
        self, conn: psycopg.AsyncConnection, topic: str, partition: int, record: Record[ChatEvent]
    ) -> Outcome:
        return await restage_one(self, STAGING, conn, topic, partition, record)
