-- The offsets ledger: for each (consumer group, topic, partition), the highest Kafka offset
-- whose effects are committed in this database. It is the source of truth for where a worker
-- resumes; Kafka's committed offsets are only for monitoring.
CREATE TABLE eventsink.offsets_ledger (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL CHECK (partition >= 0),
    last_offset    bigint      NOT NULL DEFAULT -1 CHECK (last_offset >= -1),
    -- Exact per-partition outcome counters, advanced in the same transaction as the rows.
    events         bigint      NOT NULL DEFAULT 0,
    rows_applied   bigint      NOT NULL DEFAULT 0,
    duplicates     bigint      NOT NULL DEFAULT 0,
    dead_letters   bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
