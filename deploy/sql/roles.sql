-- Least-privilege roles for eventsink, in the database you run this in (as a superuser or the
-- database owner). Idempotent: run it again after adding migrations or in a new database.
--
--   eventsink_migrator  owns the schema; runs `eventsink migrate` (DDL), `backup`, `restore`
--   eventsink_writer    the workers: read, insert and update eventsink's tables and the ledger;
--                       temporary staging tables; no DDL, no DELETE
--   eventsink_retention `eventsink retention`: delete old metric rows and idle chat sessions
--                       (their messages cascade), move old soft-deleted analyses to the
--                       archive, record how far it pruned
--
-- The roles are created without a password (NOLOGIN until you set one):
--   ALTER ROLE eventsink_writer LOGIN PASSWORD '...';
-- or use your platform's IAM / certificate authentication.

DO $$
DECLARE
    role text;
BEGIN
    -- Roles are the cluster's, not the database's: two runs at once (two databases set up at the
    -- same time on a new cluster) would both find a role missing and one would fail creating it.
    PERFORM pg_advisory_xact_lock(hashtext('eventsink deploy/sql/roles.sql'));
    FOREACH role IN ARRAY ARRAY['eventsink_migrator', 'eventsink_writer', 'eventsink_retention'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', role);
        END IF;
    END LOOP;
    EXECUTE format('GRANT CONNECT, CREATE, TEMPORARY ON DATABASE %I TO eventsink_migrator', current_database());
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO eventsink_writer', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO eventsink_retention', current_database());
END
$$;

CREATE SCHEMA IF NOT EXISTS eventsink AUTHORIZATION eventsink_migrator;
ALTER SCHEMA eventsink OWNER TO eventsink_migrator;
-- Tables migrated before this script ran (by another role) move to the migrator.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'eventsink' LOOP
        EXECUTE format('ALTER TABLE eventsink.%I OWNER TO eventsink_migrator', t.tablename);
    END LOOP;
END
$$;

REVOKE ALL ON SCHEMA eventsink FROM PUBLIC;
GRANT USAGE ON SCHEMA eventsink TO eventsink_writer, eventsink_retention;

-- Workers: DML without DELETE, on what exists now and on what later migrations create.
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA eventsink TO eventsink_writer;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA eventsink TO eventsink_writer;
ALTER DEFAULT PRIVILEGES FOR ROLE eventsink_migrator IN SCHEMA eventsink
    GRANT SELECT, INSERT, UPDATE ON TABLES TO eventsink_writer;
ALTER DEFAULT PRIVILEGES FOR ROLE eventsink_migrator IN SCHEMA eventsink
    GRANT USAGE ON SEQUENCES TO eventsink_writer;

-- Grants on particular tables, once `eventsink migrate` has created them (run this file again
-- after migrating a new database).
DO $$
BEGIN
    IF to_regclass('eventsink.schema_migrations') IS NOT NULL THEN
        REVOKE ALL ON TABLE eventsink.schema_migrations FROM eventsink_writer;
    END IF;
    IF to_regclass('eventsink.analysis_requests_archive') IS NOT NULL THEN
        -- Retention: only the tables it prunes (UPDATE because it row-locks what it picks).
        GRANT SELECT, UPDATE, DELETE ON eventsink.chat_sessions, eventsink.analysis_requests,
            eventsink.analysis_events TO eventsink_retention;
        GRANT SELECT, INSERT ON eventsink.analysis_requests_archive TO eventsink_retention;
    END IF;
    IF to_regclass('eventsink.retention_horizons') IS NOT NULL THEN
        GRANT SELECT, UPDATE, DELETE ON eventsink.metrics_raw TO eventsink_retention;
        GRANT SELECT, INSERT, UPDATE ON eventsink.retention_horizons TO eventsink_retention;
        -- Workers never say how far retention went; they (and verify) may read it.
        REVOKE INSERT, UPDATE ON eventsink.retention_horizons FROM eventsink_writer;
    END IF;
    IF to_regclass('eventsink.ledger_changes') IS NOT NULL THEN
        -- The record of operators' ledger changes is appended to, never rewritten.
        REVOKE UPDATE, DELETE ON eventsink.ledger_changes FROM eventsink_writer;
    END IF;
END
$$;
