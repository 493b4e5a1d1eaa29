-- Forward-compatible contract: the top-level fields a producer sent that the contract does not
-- know (kept when the kind's policy is `keep`; NULL when there were none), and the major version
-- of the contract the producer named (NULL: none named, which means 1). Nullable and without a
-- default, so adding them rewrites no table and holds the lock only for a moment.
ALTER TABLE eventsink.metrics_raw
    ADD COLUMN schema_version smallint,
    ADD COLUMN attributes jsonb;
ALTER TABLE eventsink.chat_messages
    ADD COLUMN schema_version smallint,
    ADD COLUMN attributes jsonb;
ALTER TABLE eventsink.analysis_events
    ADD COLUMN schema_version smallint,
    ADD COLUMN attributes jsonb;

-- How far `eventsink retention` has pruned a table: rows older than `horizon` may be gone (it
-- only moves forward). `eventsink verify` reads it, so a pruned event is not reported missing.
CREATE TABLE eventsink.retention_horizons (
    target     text        PRIMARY KEY,
    horizon    timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
