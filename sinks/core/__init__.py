"""The exactly-once core: a batch of one (topic, partition), the offsets ledger, and `Sink.write`,
the one transaction that applies a batch and advances the ledger together."""
