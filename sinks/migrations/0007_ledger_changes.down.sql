DROP TABLE IF EXISTS eventsink.ledger_changes;
