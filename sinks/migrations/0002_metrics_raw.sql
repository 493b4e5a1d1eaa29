-- One row per metric event; the idempotency key is per tenant, never global.
CREATE TABLE eventsink.metrics_raw (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid             NOT NULL,
    dedupe_id       varchar(128)     NOT NULL CHECK (dedupe_id <> ''),
    name            text             NOT NULL,
    value           double precision NOT NULL
                    CHECK (value NOT IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)),
    unit            text,
    occurred_at     timestamptz      NOT NULL,
    tags            jsonb            NOT NULL DEFAULT '{}'::jsonb,
    received_at     timestamptz      NOT NULL DEFAULT now(),
    kafka_topic     text             NOT NULL,
    kafka_partition integer          NOT NULL,
    kafka_offset    bigint           NOT NULL,
    CONSTRAINT metrics_raw_tenant_dedupe_key UNIQUE (tenant_id, dedupe_id)
);

CREATE INDEX metrics_raw_tenant_occurred_idx ON eventsink.metrics_raw (tenant_id, occurred_at);
