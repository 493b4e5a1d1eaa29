-- Back to keys by id alone (fails, and changes nothing, if two tenants' rows share an id).
DROP INDEX IF EXISTS eventsink.analysis_requests_archive_id_idx;
DROP INDEX IF EXISTS eventsink.analysis_requests_id_idx;
DROP INDEX IF EXISTS eventsink.chat_sessions_id_idx;
ALTER TABLE eventsink.chat_messages DROP CONSTRAINT IF EXISTS chat_messages_session_fkey;
ALTER TABLE eventsink.analysis_requests_archive DROP CONSTRAINT IF EXISTS analysis_requests_archive_pkey;
ALTER TABLE eventsink.analysis_requests_archive ADD CONSTRAINT analysis_requests_archive_pkey PRIMARY KEY (id);
ALTER TABLE eventsink.analysis_events DROP CONSTRAINT IF EXISTS analysis_events_pkey;
ALTER TABLE eventsink.analysis_events ADD CONSTRAINT analysis_events_pkey PRIMARY KEY (id);
ALTER TABLE eventsink.analysis_requests DROP CONSTRAINT IF EXISTS analysis_requests_pkey;
ALTER TABLE eventsink.analysis_requests ADD CONSTRAINT analysis_requests_pkey PRIMARY KEY (id);
ALTER TABLE eventsink.chat_messages DROP CONSTRAINT IF EXISTS chat_messages_pkey;
ALTER TABLE eventsink.chat_messages ADD CONSTRAINT chat_messages_pkey PRIMARY KEY (id);
ALTER TABLE eventsink.chat_sessions DROP CONSTRAINT IF EXISTS chat_sessions_pkey;
ALTER TABLE eventsink.chat_sessions ADD CONSTRAINT chat_sessions_pkey PRIMARY KEY (id);
ALTER TABLE eventsink.chat_messages ADD CONSTRAINT chat_messages_session_id_fkey
    FOREIGN KEY (session_id) REFERENCES eventsink.chat_sessions (id) ON DELETE CASCADE;
ALTER TABLE eventsink.metrics_raw DROP CONSTRAINT IF EXISTS metrics_raw_pkey;
ALTER TABLE eventsink.metrics_raw ADD CONSTRAINT metrics_raw_pkey PRIMARY KEY (id);
