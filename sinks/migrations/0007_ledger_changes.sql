-- What operators changed in the offsets ledger (`eventsink ledger skip|reset`), one row per
-- partition changed: who, when, the command they typed, and the row's offset and log identity
-- before and after. Written in the change's own transaction (a dry run rolls it back with the
-- change); never updated. `eventsink ledger history` lists it.
CREATE TABLE IF NOT EXISTS eventsink.ledger_changes (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    changed_at        timestamptz NOT NULL DEFAULT now(),
    operator          text        NOT NULL,
    command           text        NOT NULL,
    action            text        NOT NULL CHECK (action IN ('skip', 'reset')),
    consumer_group    text        NOT NULL,
    topic             text        NOT NULL,
    partition         integer     NOT NULL,
    before_offset     bigint      NOT NULL,
    after_offset      bigint      NOT NULL,
    before_topic_id   uuid,
    after_topic_id    uuid,
    before_cluster_id text,
    after_cluster_id  text,
    -- Why the operator's command was allowed (or that it was overridden, and by which flag).
    reason            text        NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_changes_by_partition
    ON eventsink.ledger_changes (consumer_group, topic, partition, changed_at);
