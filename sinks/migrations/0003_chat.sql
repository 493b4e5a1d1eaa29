-- Chat: a session per conversation (its id is the conversation_id), messages cascade with it.
CREATE TABLE eventsink.chat_sessions (
    id                uuid        PRIMARY KEY,
    tenant_id         uuid        NOT NULL,
    user_id           text,
    created_at        timestamptz NOT NULL,
    last_message_at   timestamptz NOT NULL,
    message_count     bigint      NOT NULL DEFAULT 0 CHECK (message_count >= 0),
    prompt_tokens     bigint      NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0),
    completion_tokens bigint      NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0)
);
CREATE INDEX chat_sessions_tenant_idx ON eventsink.chat_sessions (tenant_id, last_message_at);
CREATE INDEX chat_sessions_idle_idx ON eventsink.chat_sessions (last_message_at);

CREATE TABLE eventsink.chat_messages (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id         uuid         NOT NULL,
    dedupe_id         varchar(128) NOT NULL CHECK (dedupe_id <> ''),
    session_id        uuid         NOT NULL REFERENCES eventsink.chat_sessions (id) ON DELETE CASCADE,
    role              text         NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    content           text         NOT NULL,
    model             text,
    prompt_tokens     integer      CHECK (prompt_tokens >= 0),
    completion_tokens integer      CHECK (completion_tokens >= 0),
    occurred_at       timestamptz  NOT NULL,
    received_at       timestamptz  NOT NULL DEFAULT now(),
    kafka_topic       text         NOT NULL,
    kafka_partition   integer      NOT NULL,
    kafka_offset      bigint       NOT NULL,
    CONSTRAINT chat_messages_tenant_dedupe_key UNIQUE (tenant_id, dedupe_id)
);
CREATE INDEX chat_messages_session_time_idx ON eventsink.chat_messages (session_id, occurred_at);
