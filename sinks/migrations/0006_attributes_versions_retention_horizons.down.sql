DROP TABLE eventsink.retention_horizons;
ALTER TABLE eventsink.analysis_events DROP COLUMN attributes, DROP COLUMN schema_version;
ALTER TABLE eventsink.chat_messages DROP COLUMN attributes, DROP COLUMN schema_version;
ALTER TABLE eventsink.metrics_raw DROP COLUMN attributes, DROP COLUMN schema_version;
