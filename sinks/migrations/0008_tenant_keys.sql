-- Every primary key, unique constraint and foreign key of a tenant's table includes tenant_id, so
-- that the tables can be distributed by tenant_id (Citus requires the distribution column in
-- each of them; README, "Outgrowing one PostgreSQL"). Nothing the writers do changes: they
-- upsert on (tenant_id, dedupe_id) as before, and the owner of a conversation or an analysis is
-- still decided once per id by `sinks.writers.owners` (advisory lock on the id, then the row),
-- which is what kept an id to one tenant; the database no longer says so on its own.
--
-- Idempotent: each key is replaced only when it is not already the new one. The swap holds an
-- ACCESS EXCLUSIVE lock on each table while its new index builds (workers wait, then retry on
-- their lock timeout): on large tables, run it when traffic is low.

DO $$
DECLARE
    -- table, constraint, the definition it must have
    wanted text[][] := ARRAY[
        ['metrics_raw', 'metrics_raw_pkey', 'PRIMARY KEY (tenant_id, id)'],
        ['chat_sessions', 'chat_sessions_pkey', 'PRIMARY KEY (tenant_id, id)'],
        ['chat_messages', 'chat_messages_pkey', 'PRIMARY KEY (tenant_id, id)'],
        ['analysis_requests', 'analysis_requests_pkey', 'PRIMARY KEY (tenant_id, id)'],
        ['analysis_events', 'analysis_events_pkey', 'PRIMARY KEY (tenant_id, id)'],
        ['analysis_requests_archive', 'analysis_requests_archive_pkey', 'PRIMARY KEY (tenant_id, id)']
    ];
    i int;
BEGIN
    -- Messages reference their session's key: the old single-column one goes first.
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'chat_messages_session_id_fkey'
               AND conrelid = 'eventsink.chat_messages'::regclass) THEN
        ALTER TABLE eventsink.chat_messages DROP CONSTRAINT chat_messages_session_id_fkey;
    END IF;
    FOR i IN 1 .. array_length(wanted, 1) LOOP
        IF NOT EXISTS (
            SELECT 1 FROM pg_constraint
            WHERE conrelid = format('eventsink.%I', wanted[i][1])::regclass
              AND conname = wanted[i][2] AND pg_get_constraintdef(oid) = wanted[i][3]
        ) THEN
            EXECUTE format('ALTER TABLE eventsink.%I DROP CONSTRAINT IF EXISTS %I', wanted[i][1], wanted[i][2]);
            EXECUTE format('ALTER TABLE eventsink.%I ADD CONSTRAINT %I %s', wanted[i][1], wanted[i][2], wanted[i][3]);
        END IF;
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'chat_messages_session_fkey'
                   AND conrelid = 'eventsink.chat_messages'::regclass) THEN
        -- Messages still cascade with their session (retention deletes sessions).
        ALTER TABLE eventsink.chat_messages ADD CONSTRAINT chat_messages_session_fkey
            FOREIGN KEY (tenant_id, session_id) REFERENCES eventsink.chat_sessions (tenant_id, id) ON DELETE CASCADE;
    END IF;
END
$$;

-- The writers claim sessions and analyses by id alone (an id named by another tenant must be
-- found, to be refused), `verify` and retention's archive check read by id: the old primary key
-- served them, these plain indexes serve them now. Metric and message ids are never looked up
-- alone (retention deletes metric rows by tenant and id).
CREATE INDEX IF NOT EXISTS chat_sessions_id_idx ON eventsink.chat_sessions (id);
CREATE INDEX IF NOT EXISTS analysis_requests_id_idx ON eventsink.analysis_requests (id);
CREATE INDEX IF NOT EXISTS analysis_requests_archive_id_idx ON eventsink.analysis_requests_archive (id);
