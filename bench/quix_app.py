"""The Quix Streams contender, run by the interpreter of bench/out/venv-quix (see bench.quixenv).

    JSON value → filter: first sighting of (tenant_id, dedupe_id) in RocksDB state → row with
    the Kafka position → Quix's PostgreSQLSink, ON CONFLICT DO NOTHING, into the same table
    eventsink writes (eventsink.metrics_raw, created by eventsink's migrations)

Reads the environment the eventsink worker reads (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL,
EVENTSINK_METRICS_TOPIC, EVENTSINK_GROUP_ID, EVENTSINK_SESSION_TIMEOUT_MS, EVENTSINK_DATA_DIR).
On Tansu the producer must not be idempotent (no InitProducerId), and every topic, the state's
changelog included, must exist beforehand with explicit configs: `auto_create_topics=False`.
Records are not validated beyond JSON parsing (Quix's default); the sink writes one
`execute_values` INSERT per checkpoint. Run until SIGTERM.

Usage: python bench/quix_app.py [--commit-interval SECONDS]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from psycopg2.extensions import parse_dsn
from quixstreams import Application, State, message_context
from quixstreams.sinks.community.postgresql import PostgreSQLSink


def first_sighting(value: dict[str, Any], state: State) -> bool:
    key = f"{value['tenant_id']}/{value['dedupe_id']}"
    if state.exists(key):
        return False
    state.set(key, 1)
    return True


def to_row(value: dict[str, Any]) -> dict[str, Any]:
    ctx = message_context()
    return {
        **value,
        "kafka_topic": ctx.topic,
        "kafka_partition": ctx.partition,
        "kafka_offset": ctx.offset,
    }


def sink(dsn: str) -> PostgreSQLSink:
    params = parse_dsn(dsn)
    return PostgreSQLSink(
        host=params.get("host", "127.0.0.1"),
        port=int(params.get("port", 5432)),
        dbname=params["dbname"],
        user=params.get("user", "postgres"),
        password=params.get("password", ""),
        schema_name="eventsink",
        table_name="metrics_raw",
        schema_auto_update=False,
        include_metadata=False,
        on_conflict_do_nothing=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit-interval", type=float, default=5.0, help="checkpoint (and sink flush) interval, s")
    args = parser.parse_args()
    env = os.environ
    app = Application(
        broker_address=env["KAFKA_BOOTSTRAP_SERVERS"],
        consumer_group=env["EVENTSINK_GROUP_ID"],
        auto_offset_reset="earliest",
        commit_interval=args.commit_interval,
        consumer_extra_config={"session.timeout.ms": int(env.get("EVENTSINK_SESSION_TIMEOUT_MS", "45000"))},
        producer_extra_config={"enable.idempotence": False},
        state_dir=Path(env["EVENTSINK_DATA_DIR"]) / "quix-state",
        auto_create_topics=False,
        loglevel="WARNING",
    )
    sdf = app.dataframe(app.topic(env["EVENTSINK_METRICS_TOPIC"], key_deserializer="str", value_deserializer="json"))
    sdf = sdf.filter(first_sighting, stateful=True).apply(to_row)
    sdf.sink(sink(env["DATABASE_URL"]))
    app.run()


if __name__ == "__main__":
    main()
