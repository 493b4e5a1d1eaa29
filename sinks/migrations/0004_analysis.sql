-- Analysis requests: one row per analysis_id, derived from its events (analysis_events), so
-- that the same set of events gives the same row whatever order they arrive in.
CREATE TABLE eventsink.analysis_requests (
    id          uuid        PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    status      text        NOT NULL
                CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'deleted')),
    progress    smallint    CHECK (progress BETWEEN 0 AND 100),
    result      jsonb,
    error       text,
    kind        text,
    media_url   text,
    version     integer     NOT NULL DEFAULT 0 CHECK (version >= 0),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    deleted_at  timestamptz,
    CHECK ((status = 'deleted') = (deleted_at IS NOT NULL))
);
CREATE INDEX analysis_requests_status_idx ON eventsink.analysis_requests (status)
    WHERE status <> 'deleted';
CREATE INDEX analysis_requests_tenant_created_idx ON eventsink.analysis_requests (tenant_id, created_at)
    WHERE status <> 'deleted';
CREATE INDEX analysis_requests_deleted_idx ON eventsink.analysis_requests (deleted_at)
    WHERE status = 'deleted';

-- Every event applied (superseded ones included): the idempotency key per tenant, and the
-- history the row is folded from.
CREATE TABLE eventsink.analysis_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid         NOT NULL,
    dedupe_id       varchar(128) NOT NULL CHECK (dedupe_id <> ''),
    analysis_id     uuid         NOT NULL,
    status          text         NOT NULL,
    occurred_at     timestamptz  NOT NULL,
    progress        smallint,
    result          jsonb,
    error           text,
    kind            text,
    media_url       text,
    superseded      boolean      NOT NULL DEFAULT false,
    received_at     timestamptz  NOT NULL DEFAULT now(),
    kafka_topic     text         NOT NULL,
    kafka_partition integer      NOT NULL,
    kafka_offset    bigint       NOT NULL,
    CONSTRAINT analysis_events_tenant_dedupe_key UNIQUE (tenant_id, dedupe_id)
);
CREATE INDEX analysis_events_analysis_idx ON eventsink.analysis_events (analysis_id);

-- Soft-deleted analyses past retention; an id found here is never revived by a late event.
CREATE TABLE eventsink.analysis_requests_archive (
    LIKE eventsink.analysis_requests INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    archived_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id)
);

-- Applied-but-superseded events per partition, counted with the rest.
ALTER TABLE eventsink.offsets_ledger ADD COLUMN superseded bigint NOT NULL DEFAULT 0;
