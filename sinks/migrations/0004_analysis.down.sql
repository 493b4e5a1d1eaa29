ALTER TABLE eventsink.offsets_ledger DROP COLUMN superseded;
DROP TABLE eventsink.analysis_requests_archive;
DROP TABLE eventsink.analysis_events;
DROP TABLE eventsink.analysis_requests;
