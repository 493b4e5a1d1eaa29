"""Prometheus metrics of a worker. Labels are topic-level: never a tenant id by default."""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from schemas.codec import Decoded, Rejected

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_CONSUMED = Counter("eventsink_events_consumed", "Records taken from the topic", ["topic"], registry=REGISTRY)
ROWS_APPLIED = Counter(
    "eventsink_rows_applied", "Events whose effect was committed to PostgreSQL", ["topic"], registry=REGISTRY
)
DUPLICATES = Counter(
    "eventsink_duplicates_dropped",
    "Duplicate events dropped, by where they were recognised (cache, database)",
    ["topic", "where"],
    registry=REGISTRY,
)
REDELIVERED = Counter(
    "eventsink_redelivered_skipped",
    "Redelivered records at or below the ledger, skipped",
    ["topic"],
    registry=REGISTRY,
)
SUPERSEDED = Counter(
    "eventsink_superseded",
    "Events applied but older than their row's state (analysis), which changed nothing",
    ["topic"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "eventsink_dead_letters", "Records sent to the dead-letter topic", ["topic", "reason"], registry=REGISTRY
)
BATCH_RETRIES = Counter(
    "eventsink_batch_retries", "Batch attempts that failed and were retried", ["topic", "error"], registry=REGISTRY
)
OFFSET_GAPS = Counter(
    "eventsink_offset_gaps",
    "Batches that did not follow the ledger, by what the broker said was in between "
    "(verified: nothing; repositioned: records, sought back; lost: deleted by retention; "
    "unresolved: the ledger kept refusing what the broker said, the partition stopped)",
    ["topic", "outcome"],
    registry=REGISTRY,
)
LOG_GAPS = Counter(
    "eventsink_log_gaps",
    "Holes in the broker's log (transaction markers, aborted or compacted records) a batch spanned "
    "without asking the broker",
    ["topic"],
    registry=REGISTRY,
)
RECORDS_LOST = Counter(
    "eventsink_records_lost",
    "Offsets that were due but the broker no longer had (retention deleted them before they were applied)",
    ["topic", "partition"],
    registry=REGISTRY,
)
PARTITION_BLOCKED = Gauge(
    "eventsink_partition_blocked",
    "1 while a partition is stopped and waits for an operator "
    "(reason: log_changed, data_lost, unreadable, gap_unresolved)",
    ["topic", "partition", "reason"],
    registry=REGISTRY,
)
PARTITION_STALLED = Gauge(
    "eventsink_partition_stalled_seconds",
    "Seconds a partition has had records waiting while its ledger did not advance (0 when idle or flowing)",
    ["topic", "partition"],
    registry=REGISTRY,
)
FETCH_ERRORS = Counter(
    "eventsink_fetch_errors",
    "Fetches from the broker that raised (each followed by a seek to the ledger)",
    registry=REGISTRY,
)
PIPELINE_CRASHES = Counter(
    "eventsink_pipeline_crashes",
    "Unexpected errors that ended a partition's pipeline (the worker then exits)",
    ["topic"],
    registry=REGISTRY,
)
STALE_DROPPED = Counter(
    "eventsink_stale_records_dropped",
    "Records dropped because the partition was repositioned or revoked",
    ["topic"],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "eventsink_batch_size",
    "Records per committed batch",
    ["topic"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
    registry=REGISTRY,
)
UPSERT_SECONDS = Histogram(
    "eventsink_upsert_seconds",
    "Duration of one batch transaction",
    ["topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
LAST_COMMIT = Gauge(
    "eventsink_last_commit_timestamp_seconds", "Unix time of the last batch commit", ["topic"], registry=REGISTRY
)
LEDGER_OFFSET = Gauge(
    "eventsink_ledger_offset", "Last applied offset per partition", ["topic", "partition"], registry=REGISTRY
)
DEDUPE_KEYS = Gauge("eventsink_dedupe_keys", "Keys held by the dedupe fast path", ["topic"], registry=REGISTRY)
END_OFFSET = Gauge(
    "eventsink_end_offset",
    "Latest offset + 1 the broker reported per partition",
    ["topic", "partition"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "eventsink_consumer_lag",
    "Records between Kafka's committed offset of the group and the partition's end",
    ["topic", "partition"],
    registry=REGISTRY,
)
LEDGER_LAG = Gauge(
    "eventsink_ledger_lag",
    "Records between the last offset applied in PostgreSQL and the partition's end",
    ["topic", "partition"],
    registry=REGISTRY,
)
POOL_CONNECTIONS = Gauge(
    "eventsink_db_pool_connections", "Database pool connections by state", ["state"], registry=REGISTRY
)
DB_UNREACHABLE = Gauge(
    "eventsink_db_unreachable_seconds",
    "How long a topic's writers have found no database node that takes writes (0 when they commit)",
    ["topic"],
    registry=REGISTRY,
)
DB_FAILING = Gauge(
    "eventsink_db_failing_seconds",
    "How long a topic's batches have failed to commit, whatever the cause (0 when they commit)",
    ["topic"],
    registry=REGISTRY,
)
POOL_WAITING = Gauge("eventsink_db_pool_waiting", "Requests waiting for a pool connection", registry=REGISTRY)
REBALANCES = Counter("eventsink_rebalances", "Partition assignments received", registry=REGISTRY)
REBALANCING = Gauge(
    "eventsink_rebalancing_seconds",
    "How long the rebalance in progress has lasted, table recovery included (0: none); nothing is applied meanwhile",
    registry=REGISTRY,
)
GROUP_GENERATION = Gauge(
    "eventsink_group_generation", "The consumer group generation the worker is in (-1: not joined)", registry=REGISTRY
)
KAFKA_COMMIT_FAILURES = Counter(
    "eventsink_kafka_commit_failures",
    "Kafka offset commits (monitoring only) the broker refused; their offsets are committed next time",
    registry=REGISTRY,
)
ASSIGNED_PARTITIONS = Gauge(
    "eventsink_assigned_partitions", "Partitions assigned to this worker", ["topic"], registry=REGISTRY
)
TENANT_ROWS = Counter(
    "eventsink_tenant_rows_applied",
    "Rows applied per tenant, only for the tenants in EVENTSINK_TELEMETRY_TENANTS",
    ["topic", "tenant"],
    registry=REGISTRY,
)
UNKNOWN_FIELDS = Counter(
    "eventsink_unknown_fields",
    "Records carrying a top-level field their contract does not know, by field name: kept, ignored or "
    "dead-lettered as the kind's policy says (at most 100 names per topic, later ones counted as (other))",
    ["topic", "field"],
    registry=REGISTRY,
)
# Field names come from producers: a topic gets at most this many `field` label values (each at
# most MAX_FIELD_LABEL characters), so a producer sending random keys cannot grow the series.
MAX_UNKNOWN_FIELD_NAMES = 100
MAX_FIELD_LABEL = 100
OTHER_FIELDS = "(other)"
_unknown_names: dict[str, set[str]] = {}

D = TypeVar("D", Decoded, Rejected)


def count_unknown_fields(topic: str, decoded: D) -> D:
    """Count the unknown top-level fields a decoded record carried; return it unchanged."""
    if decoded.unknown:
        names = _unknown_names.setdefault(topic, set())
        for name in decoded.unknown:
            label = name[:MAX_FIELD_LABEL]
            if label not in names:
                if len(names) >= MAX_UNKNOWN_FIELD_NAMES:
                    label = OTHER_FIELDS
                else:
                    names.add(label)
            UNKNOWN_FIELDS.labels(topic, label).inc()
    return decoded
