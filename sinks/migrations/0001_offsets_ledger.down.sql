DROP TABLE eventsink.offsets_ledger;
