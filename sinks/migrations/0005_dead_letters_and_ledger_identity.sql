-- Dead letters that the dead-letter topic cannot carry as they are (larger than the producer's
-- request limit, or with neither key nor value): the full original record, written in the
-- transaction that dead-lettered it. The record on the DLQ topic carries a truncated value and
-- `eventsink.stored: postgres`; `eventsink dlq replay` sends the original bytes from here.
CREATE TABLE eventsink.dead_letter_payloads (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    kafka_offset   bigint      NOT NULL,
    reason         text        NOT NULL,
    key            bytea,
    value          bytea,
    -- [[header key, base64 value or null], ...], in the record's order
    headers        jsonb       NOT NULL DEFAULT '[]'::jsonb,
    stored_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition, kafka_offset)
);

-- Which log a ledger row describes: Kafka's topic id (where the broker reports one) and the
-- cluster. A worker refuses to skip records of a log that is not the one the ledger counted.
ALTER TABLE eventsink.offsets_ledger ADD COLUMN topic_id uuid;
ALTER TABLE eventsink.offsets_ledger ADD COLUMN cluster_id text;
-- Offsets that were due but the broker no longer had (retention deleted them first).
ALTER TABLE eventsink.offsets_ledger ADD COLUMN lost bigint NOT NULL DEFAULT 0;

CREATE TABLE eventsink.lost_ranges (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    first_offset   bigint      NOT NULL,
    last_offset    bigint      NOT NULL CHECK (last_offset >= first_offset),
    reason         text        NOT NULL,
    detected_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition, first_offset)
);
