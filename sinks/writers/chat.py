"""Chat rows: sessions created by their first message, messages cascading with their session.

Session counters and token totals grow only by the messages this transaction inserted (the
RETURNING rows of the insert), so no redelivery or duplicate can inflate them, and a session is
created only together with a message actually inserted into it. A message whose conversation
belongs to another tenant is refused (`tenant_mismatch`): the other tenant's session is only
ever read, under a row lock (`sinks.writers.owners`).
"""

from __future__ import annotations

from psycopg import AsyncConnection

from schemas.chat import ChatEvent
from sinks.core.batch import Outcome
from sinks.writers import owners
from sinks.writers.staging import Records, StagedWriter, Staging

STAGING = Staging.of(ChatEvent, "chat_stage")

# One statement: the messages of the batch that their tenant may write (its own sessions, or
# sessions it claims now) are inserted; the sessions this batch claims are created from the
# messages actually inserted, the others' counters grow by them. A session exists only with a
# message in it. (The messages' foreign key is checked at the end of the statement, when the
# sessions it creates exist.)
INSERT_MESSAGES = """
WITH allowed AS (
    SELECT s.*
    FROM chat_stage s
    JOIN unnest(%(ids)s::uuid[], %(tenants)s::uuid[]) AS o(id, tenant_id)
      ON o.id = s.conversation_id AND o.tenant_id = s.tenant_id
), inserted AS (
    INSERT INTO eventsink.chat_messages
        (tenant_id, dedupe_id, session_id, role, content, model, prompt_tokens, completion_tokens,
         occurred_at, schema_version, attributes, kafka_topic, kafka_partition, kafka_offset)
    SELECT a.tenant_id, a.dedupe_id, a.conversation_id, a.role, a.content, a.model,
           a.prompt_tokens, a.completion_tokens, a.occurred_at, a.schema_version, a.attributes,
           %(topic)s, %(partition)s, a.kafka_offset
    FROM allowed a
    ORDER BY a.tenant_id, a.dedupe_id, a.kafka_offset
    ON CONFLICT (tenant_id, dedupe_id) DO NOTHING
    RETURNING session_id, kafka_offset
), totals AS (
    SELECT i.session_id,
           min(s.tenant_id::text)::uuid AS tenant_id,
           count(*) AS messages,
           coalesce(sum(s.prompt_tokens), 0) AS prompt_tokens,
           coalesce(sum(s.completion_tokens), 0) AS completion_tokens,
           min(s.occurred_at) AS first_at,
           max(s.occurred_at) AS last_at,
           (array_agg(s.user_id ORDER BY s.occurred_at, s.kafka_offset)
                FILTER (WHERE s.user_id IS NOT NULL))[1] AS user_id
    FROM inserted i JOIN chat_stage s USING (kafka_offset)
    GROUP BY i.session_id
), created AS (
    INSERT INTO eventsink.chat_sessions
        (id, tenant_id, user_id, created_at, last_message_at, message_count, prompt_tokens, completion_tokens)
    SELECT t.session_id, t.tenant_id, t.user_id, t.first_at, t.last_at, t.messages, t.prompt_tokens,
           t.completion_tokens
    FROM totals t
    WHERE t.session_id = ANY(%(new)s::uuid[])
), counted AS (
    UPDATE eventsink.chat_sessions c
    SET message_count = c.message_count + t.messages,
        prompt_tokens = c.prompt_tokens + t.prompt_tokens,
        completion_tokens = c.completion_tokens + t.completion_tokens,
        created_at = least(c.created_at, t.first_at),
        last_message_at = greatest(c.last_message_at, t.last_at),
        user_id = coalesce(c.user_id, t.user_id)
    FROM totals t
    WHERE c.id = t.session_id AND NOT (t.session_id = ANY(%(new)s::uuid[]))
)
SELECT kafka_offset FROM inserted
"""


class ChatWriter(StagedWriter[ChatEvent], kind="chat", staging=STAGING):
    async def apply(self, conn: AsyncConnection, topic: str, partition: int, records: Records[ChatEvent]) -> Outcome:
        cur = await STAGING.stage(conn, records)
        claims = await owners.claim(conn, records, owners.CHAT_SESSIONS)
        ids, tenants = claims.pairs()
        params = {"ids": ids, "tenants": tenants, "new": list(claims.new), "topic": topic, "partition": partition}
        await cur.execute(INSERT_MESSAGES, params)
        return Outcome(applied={int(r[0]) for r in await cur.fetchall()}, rejected=claims.refused)

    async def prepare(self, conn: AsyncConnection, records: Records[ChatEvent]) -> None:
        """Before a batch is redone record by record: claim all its conversations at once."""
        await owners.lock_ids(conn, records, owners.CHAT_SESSIONS)
