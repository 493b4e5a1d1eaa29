"""PostgreSQL side of eventsink: migrations, the offsets ledger and batch upserts.

Nothing here imports Faust or Kafka clients: a sink takes a batch of one (topic, partition)
and applies it in one transaction.
"""
