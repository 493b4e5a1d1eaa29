DROP TABLE eventsink.lost_ranges;
ALTER TABLE eventsink.offsets_ledger DROP COLUMN lost;
ALTER TABLE eventsink.offsets_ledger DROP COLUMN cluster_id;
ALTER TABLE eventsink.offsets_ledger DROP COLUMN topic_id;
DROP TABLE eventsink.dead_letter_payloads;
